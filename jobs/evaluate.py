"""A run's evaluation stage: ``python jobs/evaluate.py --config FILE``.

The config is a core.evaluation_run.EvaluateJobConfig: the loop's teacher, control and student,
the named test sets, and the promotion gate. One Ray task (holding the config's CPUs and GPUs)
scores every model on every test set, applies the gate, registers a promoted student (the run
folder's record; MLflow's Model Registry when tracked) and writes the report; the job prints the
report as one JSON line.

Also runs on a cluster: ``ray job submit --working-dir . -- python jobs/evaluate.py --config FILE``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

import ray

from core.confine import check_job_paths
from core.evaluation_run import EvaluateJobConfig, run_evaluation
from core.tracking import stage_tracker
from jobs.ray_entry import exit_code, init_ray, parse_config, require_resources


def _evaluate_task(config: EvaluateJobConfig) -> dict:
    """The task: score, gate, register and write the report, tracked when the config says so."""
    import torch

    torch.set_num_threads(max(1, int(config.cpus)))
    device = "cuda" if config.gpus > 0 else "cpu"
    tracker = stage_tracker(config)
    if tracker is not None:
        tracker.log_params(config.model_dump(mode="json", exclude={"tracking"}))
    try:
        report = run_evaluation(config, device, tracker)
    except BaseException:
        if tracker is not None:
            tracker.finish("FAILED")
        raise
    if tracker is not None:
        tracker.finish("FINISHED")
    return report


def run(config: EvaluateJobConfig) -> dict:
    """Run the evaluation in a Ray task with the config's resources; returns the report.

    Raises:
        PathNotAllowedError: A path of the config lies outside its ``allowed_roots`` or is
            reached through a link now (checked again here, before anything is opened).
    """
    check_job_paths(config)
    init_ray(config.ray_address)
    bundle = {"CPU": config.cpus} | ({"GPU": config.gpus} if config.gpus else {})
    require_resources(bundle, 1, "evaluation task", config.ray_address)
    task = ray.remote(num_cpus=config.cpus, num_gpus=config.gpus, max_retries=0)(_evaluate_task)
    return ray.get(task.remote(config))


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(__doc__.splitlines()[0], EvaluateJobConfig, argv)
    report = run(config)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(exit_code(main, "jobs/evaluate.py"))
