"""The CamVid benchmark's summary: paired deltas per run, each student's promotion-gate verdict
(core/gate.py, against its seed's teacher and control), per-variant means over seeds, and the
markdown report (benchmarks/camvid_selftrain.py writes them).

Splits: ``test`` is the held-out sequence (the headline), ``val`` is transductive (its images are
in the pool the teacher labels), any other name is an ``--extra-test`` split.
"""

from __future__ import annotations

import numpy as np

from core.gate import GateSpec, verdict_of_scores

# Trained after the teacher, in this order; the control (labeled only, the students' settings and
# budget) comes first: it needs no pseudo labels.
STUDENTS = (
    "control",
    "control_levers",
    "control_init",
    "control_levers_grow",
    "centroid_7to1",
    "levers_7to1",
    "centroid_7to1_init",
    "levers_7to1_init",
    "naive_1to1",
    "naive_3to1",
    "naive_7to1",
    "centroid_1to1",
    "centroid_3to1",
    "centroid_7to1_c2f",
    "levers_1to1_grow",
    "levers_7to1_soft",
    # Issue 23: online students and their controls (same start, steps and labeled-side
    # augmentation), the controls' learning curve.
    "control_cp",
    "control_cp_1k",
    "control_cp_2k",
    "control_cp_8k",
    "online_cp",
    "control_init_cp",
    "control_init_cp_1k",
    "control_init_cp_4k",
    "control_init_cp_8k",
    "online_init_cp",
    "online_init_cp_4k",
    "online_init_fp",
)
# Each student's labeled-only control: the same real samples, start and budget, no pseudo labels.
# `control` (from scratch, the students' plain settings) trains exactly as the teacher does; the
# others match students whose real samples are drawn class first or that start from the teacher.
CONTROL_OF = {
    "levers_7to1": "control_levers",
    "levers_1to1_grow": "control_levers_grow",
    "levers_7to1_soft": "control_levers",
    "centroid_7to1_init": "control_init",
    "levers_7to1_init": "control_init",
    "online_cp": "control_cp",
    "online_init_cp": "control_init_cp",
    "online_init_cp_4k": "control_init_cp_4k",
    "online_init_fp": "control_init_cp",
}
# Controls trained at several budgets: the curve that shows whether the compared budget has
# reached the labeled data's plateau.
CURVES = {
    "control_cp": ("control_cp_1k", "control_cp_2k", "control_cp", "control_cp_8k"),
    "control_init_cp": (
        "control_init_cp_1k",
        "control_init_cp",
        "control_init_cp_4k",
        "control_init_cp_8k",
    ),
}
VARIANTS = ("teacher", *STUDENTS)
HEADLINE = "test"
TRANSDUCTIVE = "val"
RARE_CLASSES = ("pole", "sign", "pedestrian", "bicyclist")
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


# The promotion gate (core.gate, docs/gate.md) each student of a seed meets against that seed's
# teacher and its control: the default thresholds, on the held-out split only (`val` is in the
# pool the teacher labeled).
GATE = GateSpec(tests=[HEADLINE])


# --- numbers -----------------------------------------------------------------------------------


def control_of(model: str, models: list[dict] | None = None, seed: int | None = None) -> str:
    """The labeled-only control a model is compared with (see ``CONTROL_OF``). When `control` was
    not run for ``seed``, the teacher stands in: `control` trains exactly as the teacher does (same
    settings, seed and sample lists; bitwise the same weights), so running it would only repeat
    the teacher."""
    name = CONTROL_OF.get(model, "control")
    if name == "control" and models is not None:
        ran = any(m["model"] == "control" and m["seed"] == seed for m in models)
        return name if ran else "teacher"
    return name


def is_control(model: str) -> bool:
    return model.startswith("control")


def paired_deltas(record: dict, models: list[dict]) -> dict:
    """A run's differences to the teacher and the control of its seed (those in ``models``), per
    split, and its rare classes on the test split against the teacher's."""
    if "evals" not in record:
        return {}
    out: dict = {"rare_miou": rare_mean(record["evals"][HEADLINE]["per_class_iou"])}
    control = control_of(record["model"], models, record["seed"])
    for key, reference in (("teacher", "teacher"), ("control", control)):
        other = next(
            (
                m
                for m in models
                if m["model"] == reference and m["seed"] == record["seed"] and "evals" in m
            ),
            None,
        )
        if other is None or other is record or record["model"] == reference:
            continue
        out[f"delta_vs_{key}"] = {
            split: result["miou"] - other["evals"][split]["miou"]
            for split, result in record["evals"].items()
            if split in other["evals"]
        }
        if reference == "teacher":
            mine = record["evals"][HEADLINE]["per_class_iou"]
            theirs = other["evals"][HEADLINE]["per_class_iou"]
            rare = {c: difference(mine.get(c), theirs.get(c)) for c in RARE_CLASSES}
            rare["mean"] = difference(rare_mean(mine), rare_mean(theirs))
            out["rare_vs_teacher"] = rare
    gate = gate_verdict(record, models)
    if gate is not None:
        out["gate"] = gate
    return out


def gate_verdict(record: dict, models: list[dict]) -> dict | None:
    """The gate's verdict on a student (``GATE``, against the teacher and the control of its seed
    in ``models``): ``{"status", "reasons"}``; None for the teacher, a control, or a student whose
    teacher or control has no scores."""
    name = record["model"]
    if name == "teacher" or is_control(name) or "evals" not in record:
        return None
    roles = {"teacher": "teacher", "control": control_of(name, models, record["seed"])}
    scores = {name: record["evals"]}
    for reference in roles.values():
        other = next(
            (m for m in models if m["model"] == reference and m["seed"] == record["seed"]), None
        )
        if other is None or HEADLINE not in other.get("evals", {}):
            return None
        scores[reference] = other["evals"]
    found = verdict_of_scores(scores, {}, GATE, models={**roles, "student": name})
    return {"status": found.status, "reasons": found.reasons}


def aggregate(models: list[dict]) -> dict:
    """Per variant: mean and spread over seeds of each split's mIoU and per-class IoU, the mean
    paired differences to the teacher and the control, and the rare classes against the teacher."""
    out = {}
    for name in VARIANTS:
        runs = [m for m in models if m["model"] == name and "evals" in m]
        if not runs:
            continue
        splits = {}
        for split in runs[0]["evals"]:
            mious = [m["evals"][split]["miou"] for m in runs]
            classes = runs[0]["evals"][split]["per_class_iou"]
            splits[split] = {
                "miou_mean": float(np.mean(mious)),
                "miou_std": float(np.std(mious, ddof=1)) if len(mious) > 1 else None,
                "per_class_iou_mean": {
                    c: nanmean([m["evals"][split]["per_class_iou"][c] for m in runs])
                    for c in classes
                },
                **{
                    f"delta_vs_{ref}_mean": nanmean(
                        [m.get(f"delta_vs_{ref}", {}).get(split) for m in runs]
                    )
                    for ref in ("teacher", "control")
                },
            }
        rare_deltas = [m.get("rare_vs_teacher", {}) for m in runs]
        out[name] = {
            "seeds": [m["seed"] for m in runs],
            "splits": splits,
            "rare_miou_mean": nanmean([m.get("rare_miou") for m in runs]),
            "paired": {
                ref: paired_interval(
                    [
                        m[f"delta_vs_{ref}"][HEADLINE]
                        for m in runs
                        if HEADLINE in m.get(f"delta_vs_{ref}", {})
                    ]
                )
                for ref in ("teacher", "control")
            },
            "rare_vs_teacher_mean": {
                c: nanmean([d.get(c) for d in rare_deltas]) for c in (*RARE_CLASSES, "mean")
            },
            "gate": gate_count([m.get("gate") for m in runs]),
            "pseudo_share": runs[0].get("pseudo_share"),
            "steps": runs[0].get("steps"),
            "train_s_mean": float(np.mean([m["train_s"] for m in runs])),
            "job_wall_s_mean": float(np.mean([m["job_wall_s"] for m in runs])),
            "eval_wall_s_mean": float(np.mean([m["eval_wall_s"] for m in runs])),
            **{
                k: runs[0].get(k)
                for k in ("centroid_sampling", "pseudo_per_real", "crop_schedule", "levers")
            },
        }
    return out


def gate_count(verdicts: list[dict | None]) -> dict | None:
    """How many of a variant's gated runs the gate promoted: ``{"promoted", "gated"}``; None when
    none was gated (the teacher, the controls)."""
    gated = [v for v in verdicts if v is not None]
    if not gated:
        return None
    return {"promoted": sum(v["status"] == "promoted" for v in gated), "gated": len(gated)}


# Two-sided 95 % quantiles of Student's t by degrees of freedom (n - 1 paired seeds).
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def paired_interval(differences: list[float]) -> dict | None:
    """Mean and 95 % confidence interval of paired differences (one per seed): the mean plus or
    minus t(0.975, n - 1) times the standard error; None for fewer than two seeds."""
    n = len(differences)
    if n < 2:
        return None
    mean = float(np.mean(differences))
    half = T_975.get(n - 1, 1.96) * float(np.std(differences, ddof=1)) / np.sqrt(n)
    return {"n": n, "mean": mean, "low": mean - half, "high": mean + half}


def rare_mean(per_class: dict[str, float | None]) -> float | None:
    return nanmean([per_class.get(c) for c in RARE_CLASSES])


def difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def nanmean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


# --- markdown ----------------------------------------------------------------------------------


def markdown_report(summary: dict) -> str:
    """Tables for docs/results.md: the headline per variant, per-class IoU per split, the rare
    classes, every run, the pseudo labels, wall times and the commands."""
    machine, data = summary["machine"], summary["data"]
    by_variant = summary["by_variant"]
    split_names = list(data["eval_splits"])
    extras = [s for s in split_names if s not in (HEADLINE, TRANSDUCTIVE)]
    lines = [
        f"Scale `{summary['scale']}`, seeds {summary['seeds']}, {machine['date']}, "
        f"git {machine['git']}.",
        f"Machine: {machine['cpu']}, {machine['cpus']} CPUs, torch {machine['torch']}; load "
        f"average {machine['loadavg_start'][0]} at the start, {machine['loadavg_end'][0]} at the "
        f"end. Whole benchmark {summary['wall_s'] / 60:.1f} min.",
        f"Command: `{summary['command']}`",
        "",
        *describe_splits(data),
        "",
        "All at 180x240, `selftrain evaluate` with whole-image inference; mIoU and IoU in %, mean",
        "over seeds (± sd over seeds). Δ T / Δ C: paired difference to the same seed's teacher /",
        f"control. rare: mean IoU on `test` of {', '.join(RARE_CLASSES)}. pseudo share: pseudo",
        "samples / all samples. ms+flip: the teacher with multi-scale + flip inference, the",
        "settings its pseudo labels were made with.",
        "",
        f"### Headline: `{HEADLINE}` (held out), with `{TRANSDUCTIVE}` (transductive)",
        "",
    ]
    header = ["model", "centroid", "pseudo:real", "crops", "levers", "pseudo share", "steps"]
    header += [f"**{HEADLINE}** mIoU", "Δ T", "Δ C", "rare", "rare Δ T"]
    header += [f"{TRANSDUCTIVE} mIoU (transd.)", "Δ T", "Δ C"]
    for extra in extras:
        header += [f"{extra} mIoU", "Δ T", "Δ C"]
    header += ["gate", "train min"]
    lines += table_header(header)
    for name, v in by_variant.items():
        row = [
            name,
            "-" if v["pseudo_per_real"] is None else ("yes" if v["centroid_sampling"] else "no"),
            "-" if v["pseudo_per_real"] is None else f"{v['pseudo_per_real']:g}:1",
            v["crop_schedule"],
            ", ".join(short_lever(lever) for lever in v["levers"] or []) or "-",
            f"{100 * (v['pseudo_share'] or 0):.0f}%",
            str(v["steps"]),
        ]
        for split in [HEADLINE, TRANSDUCTIVE, *extras]:
            s = v["splits"].get(split)
            if s is None:
                row += ["n/a", "", ""]
            else:
                spread = f" ± {100 * s['miou_std']:.1f}" if s["miou_std"] is not None else ""
                bold = "**" if split == HEADLINE else ""
                row += [f"{bold}{100 * s['miou_mean']:.1f}{bold}{spread}"]
                row += [signed(s["delta_vs_teacher_mean"]), signed(s["delta_vs_control_mean"])]
            if split == HEADLINE:
                row += [percent(v["rare_miou_mean"]), signed(v["rare_vs_teacher_mean"]["mean"])]
        gate = v.get("gate")
        row += ["-" if gate is None else f"{gate['promoted']}/{gate['gated']} promoted"]
        row += [f"{v['train_s_mean'] / 60:.1f}"]
        lines.append(table_row(row))

    lines += ["", f"### Rare classes on `{HEADLINE}`, against the teacher (IoU, Δ T)", ""]
    lines += table_header(["model", *[h for c in RARE_CLASSES for h in (SHORT_NAMES[c], "Δ T")]])
    for name, v in by_variant.items():
        cells = []
        for c in RARE_CLASSES:
            cells += [percent(v["splits"][HEADLINE]["per_class_iou_mean"].get(c))]
            cells += [signed(v["rare_vs_teacher_mean"].get(c))]
        lines.append(table_row([name, *cells]))

    for split in split_names:
        note = {HEADLINE: " (held out)", TRANSDUCTIVE: " (transductive)"}.get(split, " (extra)")
        lines += ["", f"### Per-class IoU on `{split}`{note}", ""]
        lines += per_class_table(by_variant, split)

    lines += ["", f"### Paired differences on `{HEADLINE}` (mean and 95 % interval over seeds)", ""]
    lines += paired_table(by_variant)
    for control, curve in CURVES.items():
        if any(name in by_variant for name in curve):
            lines += ["", f"### Learning curve of `{control}` on `{HEADLINE}`", ""]
            lines += curve_table(by_variant, curve)
    lines += ["", "### Every run", ""]
    lines += every_run_table(summary["models"], split_names)
    lines += ["", *gate_lines(summary["models"])]
    lines += ["", *pseudo_label_tables(summary["pseudo_labels"], by_variant)]
    lines += ["", *wall_times(summary), "", *commands(summary), ""]
    return "\n".join(lines)


def paired_table(by_variant: dict) -> list[str]:
    """Each variant's paired differences to the teacher and to its control: mean and the 95 %
    t-interval over seeds (``paired_interval``)."""
    lines = table_header(
        ["model", "seeds", "Δ T mean", "Δ T 95 % interval", "Δ C mean", "Δ C 95 % interval"]
    )
    for name, v in by_variant.items():
        cells = [name, str(len(v["seeds"]))]
        for ref in ("teacher", "control"):
            interval = v.get("paired", {}).get(ref)
            if interval is None:
                cells += ["", ""]
            else:
                low, high = signed(interval["low"]), signed(interval["high"])
                cells += [signed(interval["mean"]), f"[{low}, {high}]"]
        lines.append(table_row(cells))
    return lines


def curve_table(by_variant: dict, curve: tuple[str, ...]) -> list[str]:
    """A control's test mIoU at each budget of its curve (mean ± sd over seeds)."""
    lines = table_header(["model", "steps", f"{HEADLINE} mIoU", "rare", "seeds"])
    for name in curve:
        v = by_variant.get(name)
        if v is None:
            continue
        s = v["splits"][HEADLINE]
        spread = f" ± {100 * s['miou_std']:.1f}" if s["miou_std"] is not None else ""
        cells = [name, str(v["steps"]), f"{100 * s['miou_mean']:.1f}{spread}"]
        lines.append(table_row([*cells, percent(v["rare_miou_mean"]), str(len(v["seeds"]))]))
    return lines


def describe_splits(data: dict) -> list[str]:
    pool = data["pool_images"]
    lines = [
        "Splits: labeled "
        f"{data['labeled_images']} images (`{data['labeled_list']}`); pool "
        f"{sum(pool.values())} ({pool['train']} train + {pool['val']} val, labels unused); "
        f"`{HEADLINE}`: sequence {data['test_sequence']}, {data['test_images']} images, in "
        f"neither; `{TRANSDUCTIVE}`: {data['val_images']} images, all in the pool."
    ]
    for name, where in data["eval_splits"].items():
        if name not in (HEADLINE, TRANSDUCTIVE):
            lines.append(
                f"Extra `{name}`: {where['images']} images, {where['format']} "
                f"`{where['source_root']}` split `{where['source_split']}`, sizes "
                f"{where['source_sizes_hw']} resized to 180x240."
            )
    return lines


def per_class_table(by_variant: dict, split: str) -> list[str]:
    present = {n: v["splits"][split] for n, v in by_variant.items() if split in v["splits"]}
    if not present:
        return ["(no runs)"]
    classes = list(next(iter(present.values()))["per_class_iou_mean"])
    lines = table_header(["model", "mIoU", *[SHORT_NAMES.get(c, c) for c in classes]])
    for name, s in present.items():
        cells = [percent(s["per_class_iou_mean"][c]) for c in classes]
        lines.append(table_row([name, percent(s["miou_mean"]), *cells]))
    return lines


def every_run_table(models: list[dict], split_names: list[str]) -> list[str]:
    header = ["model", "seed"]
    for split in split_names:
        header += [f"{split}", "Δ T", "Δ C"]
    header += ["ms+flip test", "ms+flip val", "rare", "gate", "steps", "train s", "job wall s"]
    header += ["eval s"]
    lines = table_header(header)
    for m in models:
        if "evals" not in m:
            lines.append(table_row([m["model"], str(m["seed"]), f"failed: {error_of(m)}"]))
            continue
        row = [m["model"], str(m["seed"])]
        for split in split_names:
            result = m["evals"].get(split)
            row += [percent(result["miou"]) if result else "n/a"]
            row += [
                signed(m.get(f"delta_vs_{ref}", {}).get(split)) for ref in ("teacher", "control")
            ]
        multiscale = m.get("evals_multiscale") or {}
        row += [percent(multiscale[s]["miou"]) if s in multiscale else "" for s in ("test", "val")]
        row += [percent(m.get("rare_miou")), m["gate"]["status"] if "gate" in m else "-"]
        row += [str(m["steps"]), str(m["train_s"])]
        row += [str(m["job_wall_s"]), str(m["eval_wall_s"])]
        lines.append(table_row(row))
    return lines


def gate_lines(models: list[dict]) -> list[str]:
    """Each gated run's verdict and its reasons (``GATE``)."""
    lines = [
        "### The promotion gate",
        "",
        f"Each student against its seed's teacher and control on `{HEADLINE}` (core/gate.py): at "
        f"least {signed(GATE.min_gain)} mIoU over both, no class more than "
        f"{100 * GATE.max_class_drop:.1f} IoU below the teacher.",
        "",
    ]
    gated = [m for m in models if "gate" in m]
    if not gated:
        return [*lines, "(no student was gated)"]
    for m in gated:
        lines.append(f"- {m['model']}, seed {m['seed']}: **{m['gate']['status']}**")
        lines += [f"  - {reason}" for reason in m["gate"]["reasons"]]
    return lines


def pseudo_label_tables(pseudo_labels: dict, by_variant: dict) -> list[str]:
    lines = [
        "### Pseudo labels against the pool's ground truth",
        "",
        "The teacher's labels of the pool (multi-scale + flip), IoU and pixel share (%), and the",
        "centroids per class that centroid sampling draws from. Measured, never trained on.",
        "",
    ]
    if not pseudo_labels:
        return [*lines, "(no label job ran)"]
    first = next(iter(pseudo_labels.values()))
    classes = list(first["per_class_iou"])
    lines += table_header(["seed", "images", "what", "mIoU", *classes])
    for seed, q in pseudo_labels.items():
        by_split = q.get("images_by_split", {})
        images = f"{q['images']} ({', '.join(f'{n} {k}' for k, n in sorted(by_split.items()))})"
        rows = [
            ("IoU", percent(q["miou"]), [percent(q["per_class_iou"][c]) for c in classes]),
            ("share, truth", "", [percent(q["truth_pixel_share"][c]) for c in classes]),
            ("share, pseudo", "", [percent(q["pseudo_pixel_share"][c]) for c in classes]),
            ("centroids", "", [str(q["centroids_per_class"][c]) for c in classes]),
        ]
        for what, miou, cells in rows:
            lines.append(table_row([str(seed), images, what, miou, *cells]))
    return lines


def wall_times(summary: dict) -> list[str]:
    lines = ["### Wall times (s)", ""]
    lines += table_header(["what", "seed", "wall s", "of which training", "evaluation"])
    lines.append(table_row(["data preparation", "", str(summary["data"].get("prepare_s")), "", ""]))
    for seed, q in summary["pseudo_labels"].items():
        lines.append(table_row(["label job", str(seed), str(q.get("wall_s", "n/a")), "", ""]))
    for m in summary["models"]:
        if "evals" in m:
            cells = [str(m["job_wall_s"]), str(m["train_s"]), str(m["eval_wall_s"])]
            lines.append(table_row([m["model"], str(m["seed"]), *cells]))
    lines.append(table_row(["whole benchmark", "", str(summary["wall_s"]), "", ""]))
    return lines


def commands(summary: dict) -> list[str]:
    """Every command the benchmark ran, per seed, in order."""
    lines = ["### Commands", "", "```bash", f"# {summary['command']}"]
    for seed in summary["seeds"]:
        lines.append(f"# seed {seed}")
        runs = [m for m in summary["models"] if m["seed"] == seed]
        label = summary["pseudo_labels"].get(seed)
        # The label job ran after the teacher and the controls, before the students.
        before = [m["model"] for m in runs if m["model"] == "teacher" or is_control(m["model"])]
        last_before_label = before[-1] if before else "teacher"
        for m in runs:
            if "train_command" in m:
                lines.append(m["train_command"])
            for results in (m.get("evals") or {}, m.get("evals_multiscale") or {}):
                lines += [r["command"] for r in results.values()]
            if m["model"] == last_before_label and label is not None:
                lines.append(label.get("command", "# (label job: see the first run's log)"))
    return [*lines, "```"]


def short_lever(lever: str) -> str:
    names = {
        "pseudo_augment": "strong aug",
        "real_centroid_sampling": "real centroids",
        "pseudo_keep_fraction": "keep",
        "ignore_underpredicted": "ignore under",
    }
    key, _, value = lever.partition(" ")
    return f"{names.get(key, key)} {value}".strip()


def error_of(model: dict) -> str:
    return model.get("error", "")[:80].replace("|", "/").replace("\n", " ")


def table_header(columns: list[str]) -> list[str]:
    return [table_row(columns), "|" + "---|" * len(columns)]


def table_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def signed(value: float | None) -> str:
    return "" if value is None else f"{100 * value:+.1f}"
