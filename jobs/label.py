"""The pseudo-label job: a teacher labels unlabeled images into a Zarr label store (core.store).

    python jobs/label.py --config label.yaml                       # embedded local Ray
    ray job submit --working-dir . -- python jobs/label.py --config label.yaml   # on a cluster

The driver lists the images, opens (or creates) the store, and streams one Ray Data row per shard
of the store (the shard and its images not done yet) through the steps of core.label_shards, in
one of two layouts (``layout`` in the config):

- staged (the default when the teacher actors hold GPUs): read tasks decode a shard on CPUs, a
  pool of teacher actors (``min_actors`` to ``num_actors``) only runs the model, write tasks find
  the centroids and write the shard on CPUs. The accelerators do not wait for decoding or writing,
  and Ray Data's backpressure bounds the shards in flight, so memory stays flat however many
  images there are.
- fused (the default on CPUs): each teacher actor reads, predicts and writes whole shards; no
  images move between processes.

Either way a shard has one writer, only small result rows come back to the driver, which counts
them and publishes progress, and rerunning the same config labels only what is not done.
"""

import json
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import numpy as np
import ray
import torch
from tqdm import tqdm

from core.configs import LabelJobConfig
from core.confine import check_job_paths
from core.errors import DataError, StoreError
from core.label_shards import (
    DONE,
    FAILED,
    SKIPPED,
    Outcome,
    Predict,
    ShardWork,
    label_shard,
    predict_shard,
    read_image_or_error,
    read_shard,
    write_shard,
)
from core.labeling import LabelingRun, TeacherPredictor
from core.store import LabelStore
from core.tracking import stage_tracker
from jobs.ray_entry import exit_code, init_ray, parse_config, require_resources

# How often the driver publishes progress into the store.
PROGRESS_INTERVAL_S = 1.0


@dataclass(frozen=True)
class ModelStep:
    """What the teacher actors run: ``make_predictor()`` is called once in each actor and returns
    the model step (core.label_shards.Predict); each actor holds ``resources`` on top of the
    config's CPUs and GPUs. By default (`teacher_step`), the config's teacher."""

    make_predictor: Callable[[], Predict]
    resources: dict[str, float] = field(default_factory=dict)


def teacher_step(config: LabelJobConfig) -> ModelStep:
    """The config's teacher on the actors' device (CUDA when they hold GPUs)."""
    device = "cuda" if config.gpus_per_actor > 0 else "cpu"
    checkpoint = os.path.abspath(config.teacher_checkpoint)
    return ModelStep(
        partial(
            TeacherPredictor,
            checkpoint,
            config.inference(),
            device,
            config.channels_last,
            config.compile,
        )
    )


def _use_cpus(cpus: float) -> int:
    # Ray gives an actor or task a share of the cores; more torch threads than that only contend.
    threads = max(1, int(cpus))
    torch.set_num_threads(threads)
    return threads


def _result_rows(results: list[tuple[int, Outcome, str]], work: ShardWork) -> dict[str, np.ndarray]:
    """One small row per shard for the driver (a million images are some 16 thousand rows): how
    many images it labeled, skipped and failed, the failures (``[[index, reason], ...]`` as JSON)
    and its seconds (all steps, and inside the model)."""
    outcomes = [outcome for _, outcome, _ in results]
    failures = [[index, reason] for index, outcome, reason in results if outcome == FAILED]
    return {
        "shard": np.array([work.shard], dtype=np.int64),
        DONE: np.array([outcomes.count(DONE)], dtype=np.int64),
        SKIPPED: np.array([outcomes.count(SKIPPED)], dtype=np.int64),
        FAILED: np.array([len(failures)], dtype=np.int64),
        "failures": np.array([json.dumps(failures)]),
        "seconds": np.array([sum(work.seconds.values())]),
        "model_s": np.array([work.seconds.get("model", 0.0)]),
    }


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


class TeacherLabeler:
    """The fused layout's Ray Data UDF: reads, labels and writes whole shards, one row (shard,
    indices) each; returns one small row per shard (``_result_rows``).

    Args:
        store_path: The store, created by the driver.
        step: The model step; loaded once per actor.
        run: The labeling run.
        batch_size: Images per model call.
        min_centroid_area: Smallest region that gets a centroid.
        cpus: The actor's CPUs (torch threads, and threads that decode).
    """

    def __init__(
        self,
        store_path: str,
        step: ModelStep,
        run: int,
        batch_size: int,
        min_centroid_area: int,
        cpus: float = 1.0,
    ) -> None:
        threads = _use_cpus(cpus)
        self.predict = step.make_predictor()
        self.store = LabelStore.open(store_path)
        self.run = run
        self.batch_size = batch_size
        self.min_centroid_area = min_centroid_area
        self.decoder = ThreadPoolExecutor(threads) if threads > 1 else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        parts = []
        for shard, indices in zip(batch["shard"], batch["indices"], strict=True):
            results, work = label_shard(
                self.store,
                int(shard),
                np.asarray(indices, dtype=np.int64),
                self.predict,
                self.run,
                self.batch_size,
                self.min_centroid_area,
                self._decode,
            )
            parts.append(_result_rows(results, work))
        return _concat(parts)

    def _decode(self, paths: list[str]) -> list[np.ndarray | DataError]:
        if self.decoder is None:
            return [read_image_or_error(path) for path in paths]
        # OpenCV releases the GIL while decoding, so threads decode in parallel.
        return list(self.decoder.map(read_image_or_error, paths))


# A Ray Data row holds at most this many bytes in one value (an Arrow binary cell).
MAX_ROW_BYTES = 2**31 - 1


def read_step(batch: dict[str, np.ndarray], store_path: str) -> dict[str, np.ndarray]:
    """The staged layout's first step (a CPU task): decode the shards of ``batch``.

    Raises:
        StoreError: A shard's decoded images exceed what one row holds.
    """
    store = LabelStore.open(store_path, read_only=True)
    works = []
    for shard, indices in zip(batch["shard"], batch["indices"], strict=True):
        data = read_shard(store, int(shard), np.asarray(indices, dtype=np.int64)).to_bytes()
        if len(data) > MAX_ROW_BYTES:
            raise StoreError(
                store.path,
                f"shard {shard} decodes to {len(data) / 2**30:.1f} GiB, more than a Ray Data row "
                f"holds (2 GiB): label into a new store with a smaller images_per_shard "
                f"(this one has {store.images_per_shard}), or use layout: fused",
            )
        works.append(data)
    return {"shard": batch["shard"], "work": np.array(works, dtype=object)}


class TeacherModel:
    """The staged layout's model step (the teacher actors): predicts decoded shards.

    Args:
        step: The model step; loaded once per actor.
        batch_size: Images per model call.
        cpus: The actor's CPUs (torch threads).
    """

    def __init__(self, step: ModelStep, batch_size: int, cpus: float = 1.0) -> None:
        _use_cpus(cpus)
        self.predict = step.make_predictor()
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        works = [
            predict_shard(ShardWork.from_bytes(data), self.predict, self.batch_size).to_bytes()
            for data in batch["work"]
        ]
        return {"shard": batch["shard"], "work": np.array(works, dtype=object)}


def write_step(
    batch: dict[str, np.ndarray], store_path: str, run: int, min_centroid_area: int
) -> dict[str, np.ndarray]:
    """The staged layout's last step (a CPU task): centroids and writes, one writer per shard."""
    store = LabelStore.open(store_path)
    parts = []
    for data in batch["work"]:
        work = ShardWork.from_bytes(data)
        parts.append(_result_rows(write_shard(store, work, run, min_centroid_area), work))
    return _concat(parts)


def run(config: LabelJobConfig, progress_bar: bool = True, step: ModelStep | None = None) -> dict:
    """Label every image of the source that the store does not hold as done yet.

    Args:
        config: The job.
        progress_bar: Show a progress bar on stderr.
        step: What the teacher actors run (default: `teacher_step` of the config). A benchmark
            puts an emulated accelerator here.

    Returns:
        The run's summary (core.labeling.LabelingRun.finish).

    Raises:
        PathNotAllowedError: A path of the config is outside its allowed roots or reached
            through a link now (checked again here, before anything is opened).
    """
    check_job_paths(config)
    labeling = LabelingRun.start(config)
    if config.audit:  # a misconfigured audit fails before the pool is labeled, not after
        from jobs.audit import audit_chunks

        audit_chunks(config, list(labeling.store.label_space.names))
    tracker = stage_tracker(config)
    if tracker is not None:
        tracker.log_params(config.model_dump(mode="json", exclude={"tracking"}))
    state: Literal["finished", "failed"] = "failed"
    try:
        if len(labeling.todo):
            results = _label_dataset(config, labeling, step or teacher_step(config))
            with tqdm(
                total=len(labeling.todo), desc="labeling", unit="img", disable=not progress_bar
            ) as bar:
                for row in results.iter_rows():  # one per shard
                    counts = {outcome: int(row[outcome]) for outcome in (DONE, SKIPPED, FAILED)}
                    labeling.count(counts, PROGRESS_INTERVAL_S, float(row["model_s"]))
                    for index, reason in json.loads(row["failures"]):
                        tqdm.write(f"failed: image {index}: {reason}")
                    bar.update(sum(counts.values()))
        state = "finished"
    finally:
        summary = labeling.finish(state)
        if tracker is not None:
            numbers = {k: v for k, v in summary.items() if isinstance(v, int | float)}
            tracker.log_metrics(numbers)
            tracker.log_dict(labeling.store.summary(), "store_summary.json")
            if not config.audit or state != "finished":  # else the audit's end finishes it
                tracker.finish("FINISHED" if state == "finished" else "FAILED")
    if config.audit:
        summary["audit"] = _audit(config, labeling, step or teacher_step(config), tracker)
    return summary


def _audit(config: LabelJobConfig, labeling: LabelingRun, step: ModelStep, tracker) -> dict:
    """The audit (jobs/audit.py) after the pool is labeled; its headline numbers go to MLflow."""
    from jobs.audit import recorded_audit, run_audit

    try:
        audit = recorded_audit(config, labeling.store) if not labeling.counts[DONE] else None
        if audit is None:
            init_ray(config.ray_address)
            audit = run_audit(config, labeling.store, step)
    except BaseException:
        if tracker is not None:
            tracker.finish("FAILED")
        raise
    if tracker is not None:
        tracker.log_metrics(audit.metrics())
        tracker.log_dict(audit.model_dump(mode="json"), "audit.json")
        tracker.finish("FINISHED")
    return {"miou": audit.miou, "ece": audit.ece, "n_images": audit.n_images}


def _label_dataset(
    config: LabelJobConfig, labeling: LabelingRun, step: ModelStep
) -> ray.data.Dataset:
    init_ray(config.ray_address)
    actor = {"CPU": config.cpus_per_actor} | (
        {"GPU": config.gpus_per_actor} if config.gpus_per_actor else {}
    )
    require_resources(
        actor | step.resources,
        config.min_actors or config.num_actors,
        "teacher actor",
        config.ray_address,
    )
    # Our own progress bar and the store's progress replace Ray Data's bars.
    ray.data.DataContext.get_current().enable_progress_bars = False
    # One row (and one block) per shard: a shard moves through the steps whole, so it has one
    # writer, and the shards spread over the actors.
    shards = [{"shard": shard, "indices": part.tolist()} for shard, part in labeling.shards()]
    rows = ray.data.from_items(shards, override_num_blocks=len(shards))
    if config.staged():
        return _staged(rows, config, labeling, step)
    return rows.map_batches(
        TeacherLabeler,
        fn_constructor_kwargs={
            "store_path": str(labeling.store.path),
            "step": step,
            "run": labeling.number,
            "batch_size": config.batch_size,
            "min_centroid_area": config.min_centroid_area,
            "cpus": config.cpus_per_actor,
        },
        **_teacher_actors(config, step),
    )


def _teacher_actors(config: LabelJobConfig, step: ModelStep) -> dict:
    """``map_batches`` arguments of the teacher actors' step: one shard a call, the pool, the
    resources each actor holds."""
    pool = ray.data.ActorPoolStrategy(
        min_size=config.min_actors or config.num_actors, max_size=config.num_actors
    )
    return {
        "batch_size": 1,
        "batch_format": "numpy",
        "compute": pool,
        "num_cpus": config.cpus_per_actor,
        "num_gpus": config.gpus_per_actor,
        **({"resources": step.resources} if step.resources else {}),
    }


def _staged(
    rows: ray.data.Dataset, config: LabelJobConfig, labeling: LabelingRun, step: ModelStep
) -> ray.data.Dataset:
    """Read tasks -> teacher actors -> write tasks (see the module docstring)."""
    store_path = str(labeling.store.path)
    tasks = {"batch_size": 1, "batch_format": "numpy", "num_cpus": config.cpus_per_task}
    decoded = rows.map_batches(read_step, fn_kwargs={"store_path": store_path}, **tasks)
    predicted = decoded.map_batches(
        TeacherModel,
        fn_constructor_kwargs={
            "step": step,
            "batch_size": config.batch_size,
            "cpus": config.cpus_per_actor,
        },
        **_teacher_actors(config, step),
    )
    return predicted.map_batches(
        write_step,
        fn_kwargs={
            "store_path": store_path,
            "run": labeling.number,
            "min_centroid_area": config.min_centroid_area,
        },
        **tasks,
    )


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(__doc__.splitlines()[0], LabelJobConfig, argv)
    result = run(config)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(exit_code(main, "jobs/label.py"))
