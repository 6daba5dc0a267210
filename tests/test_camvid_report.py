"""The CamVid benchmark's report (benchmarks/camvid_report.py): the promotion gate's verdict next to
each student's numbers, on hand-made records."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from camvid_report import aggregate, every_run_table, gate_lines, paired_deltas  # noqa: E402


def record(model: str, seed: int, test: float, car: float) -> dict:
    """A run as the benchmark records it: whole-image scores on `test` and `val` (val as test)."""
    result = {
        "miou": test, "pixel_accuracy": 0.9, "per_class_iou": {"road": 0.9, "car": car},
        "n_images": 101,
    }  # fmt: skip
    return {
        "model": model, "seed": seed, "evals": {"test": result, "val": result}, "steps": 100,
        "train_s": 1.0, "job_wall_s": 2.0, "eval_wall_s": 0.5,
    }  # fmt: skip


def test_each_student_gets_the_gates_verdict_against_its_seeds_teacher_and_control():
    models = [
        record("teacher", 0, test=0.40, car=0.50),
        record("control", 0, test=0.42, car=0.52),
        # +3 over the teacher, +1 over the control, car 2 IoU below the teacher's: promoted.
        record("centroid_7to1", 0, test=0.43, car=0.48),
        # +1 over the teacher, but -1 under the control: not promoted.
        record("naive_7to1", 0, test=0.41, car=0.50),
        # +5 over the teacher and +3 over the control, but car 10 below the teacher's.
        record("naive_3to1", 0, test=0.45, car=0.40),
        # Its control (control_init) did not run on seed 0: no verdict.
        record("levers_7to1_init", 0, test=0.50, car=0.50),
    ]
    for m in models:
        m.update(paired_deltas(m, models))

    by_name = {m["model"]: m for m in models}
    assert "gate" not in by_name["teacher"] and "gate" not in by_name["control"]
    assert by_name["centroid_7to1"]["gate"]["status"] == "promoted"
    naive = by_name["naive_7to1"]["gate"]
    assert naive["status"] == "not promoted"
    assert naive["reasons"] == [
        "test: the student gains -1.0 mIoU over the labeled-only control (41.0 against 42.0), "
        "below the required +0.0"
    ]
    (reason,) = by_name["naive_3to1"]["gate"]["reasons"]
    assert reason.startswith("test: class car falls 10.0 IoU below the teacher (40.0 against 50.0)")
    assert "gate" not in by_name["levers_7to1_init"]

    variants = aggregate(models)
    assert variants["centroid_7to1"]["gate"] == {"promoted": 1, "gated": 1}
    assert variants["naive_7to1"]["gate"] == {"promoted": 0, "gated": 1}
    assert variants["teacher"]["gate"] is None

    table = every_run_table(models, ["test", "val"])
    header = [cell.strip() for cell in table[0].split("|")]
    column = header.index("gate")
    gates = [[cell.strip() for cell in line.split("|")][column] for line in table[2:]]
    assert gates == ["-", "-", "promoted", "not promoted", "not promoted", "-"]
    lines = gate_lines(models)
    assert "- naive_7to1, seed 0: **not promoted**" in lines
    assert lines[lines.index("- naive_7to1, seed 0: **not promoted**") + 1].startswith(
        "  - test: the student gains -1.0 mIoU over the labeled-only control"
    )
