"""Train a teacher or a student on Ray Train: ``python jobs/train.py --config FILE [--role R]``.

The config is a core.configs.TrainJobConfig (YAML or JSON); its ``role`` (or ``--role``) says
whether this is a teacher (labeled data only) or a student (real and pseudo labels). One
TorchTrainer runs ``num_workers`` ranks (NCCL on GPUs, gloo on CPUs); each rank runs a
core.training_run.TrainingRun. Rank 0 checkpoints every epoch to Ray (``epoch_NNNN/state.pt``, the
best by val mIoU and the latest kept) and publishes the run folder's stable files
(core.runfiles: ``best.pt``, ``last.pt``, ``metrics.jsonl``). A run restarted by Ray Train after a
worker failure, or submitted again with the same run name, resumes from its latest checkpoint.
Prints the run summary (checkpoint paths, final metrics) as one JSON line.

Also runs on a cluster: ``ray job submit --working-dir . -- python jobs/train.py --config FILE``.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import ray.train
import ray.train.torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig

from core.checkpoint import load_checkpoint
from core.configs import Role, TrainJobConfig, load_config
from core.confine import check_job_paths
from core.errors import ConfigError
from core.io import output_folder
from core.runfiles import RunFiles, RunSummary
from core.sampling import Sample
from core.tracking import stage_tracker
from core.training import EpochPlan, EpochStats, open_training_data
from core.training_run import TrainingRun
from jobs.ray_entry import config_parser, exit_code, init_ray, require_resources
from jobs.train_failures import ProjectErrorTrainer

STATE_FILE = "state.pt"
# The val_miou that Ray Train's reports carry for epochs without validation: Ray ranks its
# checkpoints by val_miou and needs a number in every report (NaN or inf do not survive its run
# snapshot); -1 ranks an epoch without validation below every mIoU.
NOT_VALIDATED = -1.0


@dataclass(frozen=True)
class EpochEvent:
    """What a rank did in one epoch, handed to ``run_training``'s ``epoch_hook`` after training and
    validation, before checkpointing (tests use it to look inside the workers); ``online_state``
    is an online student's EMA teacher and thresholds on that rank."""

    rank: int
    world_size: int
    epoch: int
    plan: EpochPlan
    positions: list[int]
    samples: list[Sample]
    stats: EpochStats
    online_state: dict | None = None


EpochHook = Callable[[EpochEvent], None]


def run_training(config: TrainJobConfig, epoch_hook: EpochHook | None = None) -> RunSummary:
    """Train (or resume) the run that ``config`` describes and return its summary.

    Raises:
        ConfigError, DataError, StoreError: The data cannot be used (checked before Ray starts).
        PathNotAllowedError: A path of the config is outside its allowed roots or reached
            through a link now (checked again here, and by every rank when it starts).
        ray.train.TrainingFailedError: Training failed more often than ``max_failures`` allows.
    """
    check_job_paths(config)
    if "://" in config.storage_path:
        raise ConfigError(
            f"storage_path {config.storage_path!r}: use a local or shared (NFS) folder; the "
            "run folder's stable files are written with plain file I/O"
        )
    # Workers may run in another folder (a Ray job's working dir, another node).
    config = config.with_absolute_paths()
    output_folder(config.storage_path, "storage_path")
    # Fail here, with the real error, instead of in every worker and every retry.
    open_training_data(config)
    init_ray(config.ray_address)
    files = RunFiles.of(config.storage_path, config.run_name)
    use_gpu = config.gpus_per_worker > 0
    resources = {"CPU": config.cpus_per_worker} | (
        {"GPU": config.gpus_per_worker} if use_gpu else {}
    )
    require_resources(resources, config.num_workers, "training worker", config.ray_address)
    # A project error in a worker (a corrupt image, an unreadable store) is raised at once, not
    # retried max_failures times: it would fail the same way again.
    trainer = ProjectErrorTrainer(
        train_loop_per_worker=train_worker,
        train_loop_config={"config": config.model_dump(mode="json"), "epoch_hook": epoch_hook},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=config.num_workers, use_gpu=use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=config.run_name,
            storage_path=str(files.directory.parent),
            failure_config=FailureConfig(max_failures=config.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute="val_miou", checkpoint_score_order="max"
            ),
        ),
    )
    try:
        trainer.fit()
    except Exception:
        _track_end(config, files, "FAILED")
        raise
    summary = files.summary()
    _track_end(config, files, "FINISHED")
    return summary


def _track_end(config: TrainJobConfig, files: RunFiles, status: str) -> None:
    """The checkpoint as an artifact of the stage's MLflow run, which ends there with ``status``."""
    tracker = stage_tracker(config)
    if tracker is None:
        return
    checkpoint = files.checkpoint()
    if checkpoint is not None:
        tracker.log_artifact(checkpoint)
    tracker.finish(status)


def train_worker(loop_config: dict) -> None:
    """The per-rank training function that Ray Train runs."""
    config = TrainJobConfig.model_validate(loop_config["config"])
    check_job_paths(config)  # a rank restarted after a failure checks again
    epoch_hook: EpochHook | None = loop_config.get("epoch_hook")
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    run = TrainingRun.start(config, ray.train.torch.get_device(), rank, world_size)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            run.restore(load_checkpoint(Path(directory) / STATE_FILE))
    trained = run.trained_module()
    tracker = None
    if rank == 0:  # rank 0 logs; a resumed job finds its MLflow run again by the run folder
        tracker = stage_tracker(config)
        if tracker is not None:
            tracker.log_params(config.model_dump(mode="json", exclude={"tracking"}))
    for epoch in run.remaining_epochs():
        result = run.train_epoch(trained, epoch)
        if epoch_hook is not None:
            positions = [position for position, _ in result.part]
            samples = [sample for _, sample in result.part]
            online_state = None if run.online is None else run.online.state_dict()
            epoch_hook(
                EpochEvent(
                    rank,
                    world_size,
                    epoch,
                    result.plan,
                    positions,
                    samples,
                    result.stats,
                    online_state,
                )
            )
        if tracker is not None:
            tracker.log_epoch(result.row)
        val_miou = result.row.val_miou
        reported = {
            **result.row.model_dump(),
            "val_miou": NOT_VALIDATED if val_miou is None else val_miou,
        }
        if rank != 0:
            ray.train.report(reported)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            run.save(Path(tmp) / STATE_FILE, result)
            ray.train.report(
                reported,
                checkpoint=Checkpoint.from_directory(tmp),
                checkpoint_dir_name=f"epoch_{epoch + 1:04d}",
            )


def main(argv: Sequence[str] | None = None, role: Role | None = None) -> int:
    """Train the run of ``--config``; ``--role`` (or ``role``) overrides the config's role."""
    parser = config_parser(__doc__.splitlines()[0])
    parser.add_argument("--role", choices=["teacher", "student"], default=role)
    args = parser.parse_args(argv)
    config = load_config(args.config, TrainJobConfig)
    if args.role is not None:
        config = TrainJobConfig.model_validate({**config.model_dump(), "role": args.role})
    print(run_training(config).model_dump_json(exclude={"history"}))
    return 0


if __name__ == "__main__":
    sys.exit(exit_code(main, "jobs/train.py"))
