"""The CamVid benchmark's summary: per-variant means over seeds and the markdown report
(benchmarks/camvid_selftrain.py writes both)."""

from __future__ import annotations

import numpy as np

STUDENTS = ("naive_1to1", "centroid_1to1", "centroid_3to1", "centroid_7to1", "centroid_3to1_c2f")
VARIANTS = ("teacher", *STUDENTS)
RARE_CLASSES = ("pole", "sign", "fence", "pedestrian", "bicyclist")
SHORT_NAMES = {
    "sky": "sky",
    "building": "bldg",
    "pole": "pole",
    "road": "road",
    "sidewalk": "sdwk",
    "tree": "tree",
    "sign": "sign",
    "fence": "fence",
    "car": "car",
    "pedestrian": "ped",
    "bicyclist": "bike",
}


def aggregate(models: list[dict]) -> dict:
    """Per variant: mean and spread of mIoU and per-class IoU over seeds, and the paired
    difference to the teacher of the same seed."""
    teacher = {m["seed"]: m["miou"] for m in models if m["model"] == "teacher" and "miou" in m}
    out = {}
    for name in VARIANTS:
        runs = [m for m in models if m["model"] == name and "miou" in m]
        if not runs:
            continue
        mious = [m["miou"] for m in runs]
        classes = runs[0]["per_class_iou"]
        per_class = {c: nanmean([m["per_class_iou"][c] for m in runs]) for c in classes}
        deltas = [m["miou"] - teacher[m["seed"]] for m in runs if m["seed"] in teacher]
        out[name] = {
            "seeds": [m["seed"] for m in runs],
            "miou_mean": float(np.mean(mious)),
            "miou_std": float(np.std(mious, ddof=1)) if len(mious) > 1 else None,
            "delta_vs_teacher_mean": float(np.mean(deltas)) if name != "teacher" else None,
            "delta_vs_teacher": deltas if name != "teacher" else None,
            "per_class_iou_mean": per_class,
            "pseudo_share": runs[0].get("pseudo_share"),
            "steps": runs[0].get("steps"),
            "train_s_mean": float(np.mean([m["train_s"] for m in runs])),
            "job_wall_s_mean": float(np.mean([m["job_wall_s"] for m in runs])),
            **{k: runs[0][k] for k in ("centroid_sampling", "pseudo_per_real", "crop_schedule")},
        }
    return out


def nanmean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def markdown_report(summary: dict) -> str:
    """Tables for docs/results.md: per variant (mean over seeds), per run, and pseudo labels."""
    machine = summary["machine"]
    lines = [
        f"Scale `{summary['scale']}`, seeds {summary['seeds']}, {machine['date']}, "
        f"git {machine['git']}.",
        f"Machine: {machine['cpu']}, {machine['cpus']} CPUs, torch {machine['torch']}; load "
        f"average {machine['loadavg_start'][0]} at the start, {machine['loadavg_end'][0]} at the "
        f"end. Whole benchmark {summary['wall_s'] / 60:.1f} min.",
        f"Command: `{summary['command']}`",
        "",
        "mIoU and per-class IoU (%) on CamVid val (101 images at 180x240, `selftrain evaluate`,",
        "whole-image inference), mean over seeds; Δ: paired difference to the same seed's teacher;",
        f"rare: mean IoU of {', '.join(RARE_CLASSES)}; pseudo share: pseudo samples / all samples.",
        "",
    ]
    by_variant = summary["by_variant"]
    any_run = next(iter(by_variant.values()), None)
    classes = list(any_run["per_class_iou_mean"]) if any_run else list(SHORT_NAMES)
    header = ["model", "centroid", "pseudo:real", "crops", "pseudo share", "steps", "mIoU", "Δ"]
    header += ["rare"]
    header += [SHORT_NAMES.get(c, c) for c in classes] + ["train min"]
    lines += table_header(header)
    for name, v in by_variant.items():
        spread = f" ± {100 * v['miou_std']:.1f}" if v["miou_std"] is not None else ""
        delta = v["delta_vs_teacher_mean"]
        row = [
            name,
            "-" if name == "teacher" else ("yes" if v["centroid_sampling"] else "no"),
            "-" if v["pseudo_per_real"] is None else f"{v['pseudo_per_real']:.3g}:1",
            v["crop_schedule"],
            f"{100 * (v['pseudo_share'] or 0):.0f}%",
            str(v["steps"]),
            f"**{100 * v['miou_mean']:.1f}**{spread}",
            "" if delta is None else f"{100 * delta:+.1f}",
            percent(nanmean([v["per_class_iou_mean"].get(c) for c in RARE_CLASSES])),
            *[percent(v["per_class_iou_mean"][c]) for c in classes],
            f"{v['train_s_mean'] / 60:.1f}",
        ]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Every run:", ""]
    lines += table_header(["model", "seed", "mIoU", "ms+flip mIoU", *classes, "job wall s"])
    for m in summary["models"]:
        if "miou" not in m:
            lines.append(f"| {m['model']} | {m['seed']} | failed: {m.get('error', '')[:80]} |")
            continue
        ms = percent(m["miou_multiscale"]) if "miou_multiscale" in m else ""
        per_class = [percent(m["per_class_iou"][c]) for c in classes]
        row = [m["model"], str(m["seed"]), percent(m["miou"]), ms, *per_class]
        lines.append("| " + " | ".join([*row, str(m["job_wall_s"])]) + " |")
    lines += ["", "Pseudo labels against the pool's ground truth (IoU and pixel share, %):", ""]
    lines += table_header(["seed", "images", "what", "mIoU", *classes])
    for seed, q in summary["pseudo_labels"].items():
        rows = [
            ("IoU", percent(q["miou"]), [percent(q["per_class_iou"][c]) for c in classes]),
            ("share, truth", "", [percent(q["truth_pixel_share"][c]) for c in classes]),
            ("share, pseudo", "", [percent(q["pseudo_pixel_share"][c]) for c in classes]),
            ("centroids", "", [str(q["centroids_per_class"][c]) for c in classes]),
        ]
        for what, miou, cells in rows:
            row = [str(seed), str(q["images"]), what, miou, *cells]
            lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    return "\n".join(lines)


def table_header(columns: list[str]) -> list[str]:
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"
