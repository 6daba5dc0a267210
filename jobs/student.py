"""Train a student on real and pseudo labels: ``python jobs/student.py --config FILE``.

The config is a core.configs.TrainJobConfig (YAML or JSON) whose ``pseudo`` lists the label
stores (with their confidence thresholds); modes ``joint`` (default), ``pretrain_finetune`` and
``finetune`` are described in core/training.py. Prints the run summary as one JSON line; the
``best.pt`` it names can label the next round as a teacher.

Also runs on a cluster: ``ray job submit --working-dir . -- python jobs/student.py --config FILE``.
"""

from __future__ import annotations

import json
import sys

from core.configs import TrainJobConfig
from jobs.ray_entry import parse_config
from jobs.train import EpochHook, run_training


def run(config: TrainJobConfig, epoch_hook: EpochHook | None = None) -> dict:
    """Train (or resume) the student run; see jobs.train.run_training for the summary returned."""
    student = TrainJobConfig.model_validate({**config.model_dump(), "role": "student"})
    return run_training(student, epoch_hook)


def main(argv: list[str] | None = None) -> int:
    config = parse_config(
        "Train a student on real and pseudo labels (Ray Train).", TrainJobConfig, argv
    )
    summary = run(config)
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
