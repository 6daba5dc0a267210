"""Cross-domain self-training with new classes (paper Sec. 3.4), scored on a held-out CamVid
sequence.

Source: synthetic driving scenes with Cityscapes' 19 classes (``selftrain synth --domain source``,
180x240). Target: CamVid with its own 11 classes, split as in benchmarks/camvid_selftrain.py
(``test`` = sequence 0006R0, held out of everything; the pool = 334 frames; ``val`` transductive).
Per seed, every step the real job (configs in ``benchmarks/camvid_cross/``):

1. ``source``: trained on the synthetic scenes (19 classes).
2. ``label``: the source model labels the CamVid pool (19 classes, multi-scale + flip).
3. ``pseudo_student``: 19 classes, from scratch, synthetic real labels + CamVid pseudo labels at
   pseudo:real 7:1 with centroid sampling.
4. (a) ``finetune``: the source model finetuned on 10 CamVid images per class (12 frames of the
   inductive labeled 1/8, ``n_shot: 10``), the classifier re-initialized for CamVid's 11 classes.
5. (b) ``pseudo_finetune``: the pseudo-label student finetuned the same way.
6. ``scratch``: the same 10-shot set from scratch (the teacher's budget), for reference.

The 11-class models are evaluated on ``test`` and ``val``. Prints one JSON line per model and a
summary line; writes ``<workdir>/cross/results.md`` and ``summary.json``.

    python benchmarks/camvid_cross_domain.py --workdir camvid-bench --scale smoke   # plumbing
    python benchmarks/camvid_cross_domain.py --workdir camvid-bench --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

from camvid_data import build_once, prepare_data
from camvid_report import RARE_CLASSES, SHORT_NAMES
from camvid_selftrain import (
    REPO,
    JobError,
    add_common_arguments,
    describe_machine,
    job_environment,
    log,
    resolve_label_config,
    run_job,
    train_and_evaluate,
)

from core.configs import save_config
from core.synth import write_synthetic_dataset

CONFIG_DIR = REPO / "benchmarks" / "camvid_cross"
SOURCE_NAME = "synth_source_180x240"
SOURCE_SIZE = (180, 240)
SOURCE_SEED = 0
# Trained in the source's classes: not evaluated on CamVid.
SOURCE_CLASS_MODELS = ("source", "pseudo_student")
# CamVid-class models, the order of the report.
TARGET_MODELS = ("scratch", "finetune", "pseudo_finetune")
MODEL_ROLES = {
    "scratch": "10-shot CamVid from scratch (reference)",
    "finetune": "(a) source model, finetuned on 10-shot CamVid",
    "pseudo_finetune": "(b) source model -> CamVid pseudo labels -> finetuned on 10-shot CamVid",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument(
        "--source-images", type=int, default=1000, help="synthetic source scenes (written once)"
    )
    args = parser.parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    start = time.perf_counter()
    workdir = args.workdir.expanduser().resolve()
    machine = describe_machine()
    log(f"preparing data in {workdir / 'data'}")
    data = prepare_data(args.camvid.expanduser().resolve(), workdir / "data")
    source_root = workdir / "data" / SOURCE_NAME
    data["source"] = write_source(source_root, args.source_images)
    env = job_environment(args.scale)
    out_dir = workdir / ("cross" if args.scale == "full" else f"cross_{args.scale}")
    models: list[dict] = []
    for seed in seeds:
        models += run_seed(seed, out_dir / f"seed{seed}", args.scale, data, env)
    machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    summary = {
        "scale": args.scale,
        "seeds": seeds,
        "machine": machine,
        "data": data,
        "by_model": aggregate(models),
        "wall_s": round(time.perf_counter() - start, 1),
        "command": shlex.join(["python", "benchmarks/camvid_cross_domain.py", *given]),
        "models": models,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "results.md").write_text(markdown_report(summary))
    log(f"wrote {out_dir / 'results.md'} and summary.json")
    print(json.dumps({k: v for k, v in summary.items() if k != "models"}), flush=True)
    return 1 if any("error" in m for m in models) else 0


def write_source(root: Path, images: int) -> dict:
    """The synthetic source scenes (Cityscapes layout), written once; ``source.json`` says how."""
    recipe = {"images": images, "domain": "source", "size_hw": list(SOURCE_SIZE)}
    recipe["seed"] = SOURCE_SEED

    def build(tmp: Path) -> None:
        write_synthetic_dataset(tmp, images, "source", SOURCE_SIZE, SOURCE_SEED)
        (tmp / "source.json").write_text(json.dumps(recipe) + "\n")

    build_once(root, build)
    written = json.loads((root / "source.json").read_text())
    if written != recipe:
        raise SystemExit(f"{root} holds {written}, not {recipe}: use another --workdir")
    return {"root": str(root), **recipe}


def run_seed(seed: int, seed_dir: Path, scale: str, data: dict, env: dict) -> list[dict]:
    """The six steps of one seed; a failed step skips the steps that need it."""
    for sub in ("configs", "logs", "evals"):
        (seed_dir / sub).mkdir(parents=True, exist_ok=True)
    records: list[dict] = []

    def train(name: str) -> bool:
        record = train_and_evaluate(
            name, seed, seed_dir, scale, data, env, CONFIG_DIR, name not in SOURCE_CLASS_MODELS
        )
        print(json.dumps(record), flush=True)
        records.append(record)
        return "error" not in record

    train("scratch")
    if not train("source"):
        return records
    train("finetune")
    label_config = resolve_label_config(seed_dir, scale, "label", CONFIG_DIR)
    config_path = save_config(label_config, seed_dir / "configs" / "label.yaml")
    command = [sys.executable, str(REPO / "jobs" / "label.py"), "--config", str(config_path)]
    log(f"seed {seed}: the source model labels the CamVid pool")
    record: dict = {"model": "label", "seed": seed, "command": shlex.join(command)}
    try:
        result, wall = run_job(command, seed_dir / "logs" / "label.log", env)
        record.update(job=result, wall_s=round(wall, 1))
    except JobError as exc:
        record["error"] = str(exc)
    print(json.dumps(record), flush=True)
    records.append(record)
    if "error" not in record and train("pseudo_student"):
        train("pseudo_finetune")
    return records


def aggregate(models: list[dict]) -> dict:
    """Per CamVid-class model: mean and sd over seeds of mIoU on every split, mean per-class IoU on
    ``test``, and the paired difference to ``finetune`` (a) and ``scratch`` on ``test``."""
    out = {}
    evaluated = [m for m in models if "evals" in m]
    for name in TARGET_MODELS:
        runs = [m for m in evaluated if m["model"] == name]
        if not runs:
            continue
        splits = {
            split: mean_sd([m["evals"][split]["miou"] for m in runs]) for split in runs[0]["evals"]
        }
        classes = runs[0]["evals"]["test"]["per_class_iou"]
        per_class = {
            c: statistics.fmean(m["evals"]["test"]["per_class_iou"][c] for m in runs)
            for c in classes
        }
        deltas = {}
        for other in ("scratch", "finetune") if name != "scratch" else ():
            pairs = paired(evaluated, name, other)
            if pairs and other != name:
                deltas[other] = mean_sd([a - b for a, b in pairs])
        out[name] = {
            "seeds": [m["seed"] for m in runs],
            "miou": splits,
            "per_class_iou_test": per_class,
            "rare_test": statistics.fmean(per_class[c] for c in RARE_CLASSES),
            "delta_test": deltas,
            "steps": statistics.fmean(m.get("steps", 0) for m in runs),
            "train_s": statistics.fmean(m.get("train_s", 0.0) for m in runs),
        }
    return out


def paired(models: list[dict], name: str, other: str) -> list[tuple[float, float]]:
    """(name's, other's) test mIoU for each seed that has both."""
    by_seed = {m["seed"]: m["evals"]["test"]["miou"] for m in models if m["model"] == other}
    return [
        (m["evals"]["test"]["miou"], by_seed[m["seed"]])
        for m in models
        if m["model"] == name and m["seed"] in by_seed
    ]


def mean_sd(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def pct(stat: dict) -> str:
    text = f"{100 * stat['mean']:.1f}"
    return text + (f" ± {100 * stat['sd']:.1f}" if stat["n"] > 1 else "")


def signed(stat: dict | None) -> str:
    if stat is None:
        return ""
    text = f"{100 * stat['mean']:+.1f}"
    return text + (f" ± {100 * stat['sd']:.1f}" if stat["n"] > 1 else "")


def markdown_report(summary: dict) -> str:
    """The table for docs/results.md: mIoU on the held-out sequence and val, the paired
    differences, per-class IoU on test, steps and times; the command."""
    machine, by_model = summary["machine"], summary["by_model"]
    lines = [
        f"Scale `{summary['scale']}`, seeds {summary['seeds']}, {machine['date']}, "
        f"git {machine['git']}; {machine['cpu']}, {machine['cpus']} CPUs, load average "
        f"{machine['loadavg_start'][0]} at the start, {machine['loadavg_end'][0]} at the end; "
        f"{summary['wall_s'] / 60:.1f} min.",
        f"Command: `{summary['command']}`",
        "",
        "mIoU in %, mean ± sd over seeds; Δ: paired difference on `test` (same seed).",
        "",
        "| model | what | **test** mIoU | Δ scratch | Δ (a) | val mIoU (transd.) | rare | steps |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in by_model.items():
        deltas = row["delta_test"]
        lines.append(
            f"| {name} | {MODEL_ROLES[name]} | {pct(row['miou']['test'])} | "
            f"{signed(deltas.get('scratch'))} | {signed(deltas.get('finetune'))} | "
            f"{pct(row['miou']['val'])} | {100 * row['rare_test']:.1f} | {row['steps']:.0f} |"
        )
    if by_model:
        classes = list(next(iter(by_model.values()))["per_class_iou_test"])
        lines += [
            "",
            "Per-class IoU on `test` (%):",
            "",
            "| model | " + " | ".join(SHORT_NAMES.get(c, c) for c in classes) + " |",
            "|---|" + "---|" * len(classes),
        ]
        for name, row in by_model.items():
            values = " | ".join(f"{100 * row['per_class_iou_test'][c]:.1f}" for c in classes)
            lines.append(f"| {name} | {values} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
