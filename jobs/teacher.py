"""Train a teacher on labeled data only: ``python jobs/teacher.py --config FILE``.

The config is a core.configs.TrainJobConfig (YAML or JSON); its role is set to ``teacher``, which
allows no label stores. Prints the run summary (checkpoint paths, final metrics) as one JSON line.
"""

from __future__ import annotations

import json
import sys

from core.configs import TrainJobConfig
from jobs.ray_entry import parse_config
from jobs.train import EpochHook, run_training


def run(config: TrainJobConfig, epoch_hook: EpochHook | None = None) -> dict:
    """Train (or resume) the teacher run; see jobs.train.run_training for the summary returned."""
    teacher = TrainJobConfig.model_validate({**config.model_dump(), "role": "teacher"})
    return run_training(teacher, epoch_hook)


def main(argv: list[str] | None = None) -> int:
    config = parse_config("Train a teacher on labeled data (Ray Train).", TrainJobConfig, argv)
    summary = run(config)
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
