"""The audit's cost against the pool's size: it should be the audit set's, whatever the pool's.

    python benchmarks/audit_cost.py --pools 32 128 --audit 16 --size 128x256

For each pool size, a label job (jobs/label.py, in-process Ray) labels the pool with a randomly
initialized "small" teacher into a fresh store, then the audit step (jobs/audit.py) labels the
audit set (labeled synthetic scenes) with the same teacher and settings and records the audit.
Both are timed apart; the audit of the largest pool over the audit of the smallest is ~1 when the
audit adds no work per pool image, while the labeling grows with the pool. Prints one JSON line:
pools, labeling and audit seconds per pool, both ratios, the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from core.checkpoint import save_checkpoint
from core.configs import DataSource, LabelJobConfig
from core.labels import CITYSCAPES
from core.models import build_model
from core.store import LabelStore
from core.synth import write_synthetic_dataset
from jobs.audit import run_audit
from jobs.label import run, teacher_step
from jobs.ray_entry import init_ray
from selftrain.cli import parse_size


def one_pool(work: Path, teacher: Path, pool: Path, audit: DataSource, n: int) -> dict:
    config = LabelJobConfig(
        teacher_checkpoint=str(teacher),
        source=DataSource(format="folder", root=str(pool)),
        store=str(work / f"pool{n}.zarr"),
        num_actors=1,
        cpus_per_actor=1.0,
        batch_size=8,
    )
    start = time.perf_counter()
    run(config, progress_bar=False)
    label_s = time.perf_counter() - start
    audited = config.model_copy(update={"audit": [audit]})
    start = time.perf_counter()
    result = run_audit(audited, LabelStore.open(config.store), teacher_step(audited))
    return {
        "label_s": round(label_s, 2),
        "audit_s": round(time.perf_counter() - start, 2),
        "audit_images": result.n_images,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pools", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--audit", type=int, default=16)
    parser.add_argument("--size", default="128x256")
    args = parser.parse_args()
    size = parse_size(args.size)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        torch.manual_seed(0)
        model = build_model("small", CITYSCAPES.num_classes)
        teacher = save_checkpoint(work / "t.pt", model, "small", {}, CITYSCAPES, epoch=1)
        write_synthetic_dataset(work / "audit", args.audit, "source", size, seed=1, split="val")
        audit = DataSource(format="cityscapes", root=str(work / "audit"), split="val")
        init_ray(quiet=True)
        rows = {}
        for n in args.pools:
            pool = work / f"pool{n}"
            write_synthetic_dataset(pool, n, "target", size, seed=2, split="train")
            rows[n] = one_pool(work, teacher, pool, audit, n)
    small, large = rows[min(rows)], rows[max(rows)]
    print(
        json.dumps(
            {
                "pools": list(rows),
                "audit_images": args.audit,
                "size": args.size,
                "runs": rows,
                "pool_ratio": max(rows) / min(rows),
                "label_ratio": round(large["label_s"] / small["label_s"], 2),
                "audit_ratio": round(large["audit_s"] / small["audit_s"], 2),
                "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
                "load_average": [round(x, 1) for x in os.getloadavg()],
            }
        )
    )


if __name__ == "__main__":
    main()
