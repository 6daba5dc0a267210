"""Run a whole self-training run on this machine: ``selftrain run --spec RUN.yaml --output DIR``.

The run spec is the control plane's (core.plan.RunSpec, the REST body of ``POST /api/runs``): its
paths are resolved and checked as the service does (services.spec_inputs), it is planned into the
same stages (core.plan.plan_stages), and each stage runs the job function the service submits to
Ray (jobs/train.py, jobs/label.py), in this process on an embedded Ray. Loops included: the last
model of a round labels the sources again and the next student trains on its labels. At the end
every trained model is scored on the ``--test`` sets, which no stage reads.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from pydantic import ValidationError

from core.configs import DataSource, TrackingSettings, TrainJobConfig, load_config
from core.errors import ConfigError, DataError
from core.evaluate import evaluate_checkpoint
from core.evaluation_run import EvaluateJobConfig, EvaluationReport, read_report
from core.gate import GateSpec, describe, stops_run
from core.io import output_folder
from core.plan import PlannedStage, RunSpec, job_config, plan_stages, with_existing_inputs
from core.runfiles import RunFiles, resolve_checkpoint
from core.tracking import end_parent, local_tracking, start_parent
from selftrain.progress import EpochProgress
from services.spec_inputs import check_spec_data, resolve_spec_paths


def plan_local_run(spec: RunSpec, output: Path, roots: Sequence[Path]) -> list[PlannedStage]:
    """The stages of ``spec`` with outputs under ``output``, its paths resolved inside ``roots``
    (relative ones against the first) and its data checked, as the service does at creation."""
    resolved = resolve_spec_paths(spec, list(roots))
    check_spec_data(resolved)
    return plan_stages(resolved, output)


def run_stage(
    stage: PlannedStage, progress: bool = True, tracking: TrackingSettings | None = None
) -> None:
    """Run one planned job stage in this process, as the control plane's job would on Ray; with
    ``tracking``, the stage logs its MLflow run there (core.tracking)."""
    from jobs import evaluate, label, train  # Ray Train and Ray Data are heavy imports

    config = job_config(with_existing_inputs(stage)).model_copy(update={"tracking": tracking})
    if isinstance(config, TrainJobConfig):
        files = RunFiles.of(config.storage_path, config.run_name)
        with EpochProgress(files.metrics, config.epochs, stage.name, enabled=progress):
            train.run_training(config)
    elif isinstance(config, EvaluateJobConfig):
        evaluate.run(config)
    else:
        label.run(config, progress_bar=progress)


def evaluation_reports(stages: Sequence[PlannedStage]) -> list[EvaluationReport]:
    """The reports of the evaluation stages that have run, in loop order.

    Raises:
        DataError: A report that exists cannot be read.
    """
    reports = []
    for stage in stages:
        if stage.kind == "evaluate" and Path(stage.outputs["report"]).exists():
            reports.append(read_report(stage.outputs["report"]))
    return reports


def gate_results(stages: Sequence[PlannedStage]) -> dict:
    """What the run's evaluation stages found, JSON-able (for ``selftrain run``'s and the demo's
    results): ``evaluations`` and ``verdicts`` per loop, the run's ``verdict`` (the last loop's,
    None without a gate) and ``promoted`` (the last registration, None if nothing was)."""
    reports = evaluation_reports(stages)
    verdicts = [r.verdict for r in reports if r.verdict is not None]
    registrations = [r.registration for r in reports if r.registration is not None]
    return {
        "evaluations": [r.evaluation.model_dump(mode="json") for r in reports],
        "verdicts": [v.model_dump(mode="json") for v in verdicts],
        "verdict": verdicts[-1].model_dump(mode="json") if verdicts else None,
        "promoted": registrations[-1].model_dump(mode="json") if registrations else None,
    }


def gate_stop(stage: PlannedStage, gate: GateSpec | None) -> str | None:
    """Why the run stops after ``stage`` (an evaluation whose student failed a gate with
    ``stop_on_fail``), or None."""
    if stage.kind != "evaluate" or gate is None:
        return None
    try:
        report = read_report(stage.outputs["report"])
    except DataError:
        return None
    return stops_run(gate, report.verdict)


@contextlib.contextmanager
def tracked_run(folder: Path, name: str) -> Iterator[TrackingSettings | None]:
    """The run's MLflow run in ``folder/mlflow.db`` when MLflow is installed (else None): the
    stages run inside it and nest theirs under it; it ends FAILED if they raise."""
    tracking = local_tracking(folder, name)
    if tracking is None:
        yield None
        return
    folder.mkdir(parents=True, exist_ok=True)
    parent = start_parent(tracking)
    try:
        yield tracking.model_copy(update={"parent_run_id": parent})
    except BaseException:
        end_parent(tracking, parent, "FAILED")
        raise
    end_parent(tracking, parent)


def start_ray() -> None:
    """An embedded Ray for the stages; the workers' log lines stay in Ray's session folder."""
    from jobs.ray_entry import init_ray

    init_ray(quiet=True)


def trained_checkpoints(stages: Sequence[PlannedStage]) -> dict[str, str]:
    """Each training stage's checkpoint (``best.pt``, else ``last.pt``), by stage name."""
    found = {}
    for stage in stages:
        if stage.script == "train":
            path = resolve_checkpoint(stage.outputs["checkpoint"])
            if path is not None:
                found[stage.name] = str(path)
    return found


def score(checkpoints: dict[str, str], tests: dict[str, DataSource]) -> dict[str, dict]:
    """``evaluate_checkpoint`` of each checkpoint on each test set: ``{model: {test: result}}``."""
    return {
        name: {test: evaluate_checkpoint(path, source) for test, source in tests.items()}
        for name, path in checkpoints.items()
    }


def run_local(
    spec: RunSpec,
    output: Path,
    roots: Sequence[Path],
    tests: dict[str, DataSource],
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> dict:
    """Plan and run ``spec`` here, then score every trained model on ``tests``.

    Returns:
        ``stages`` (name, kind, outputs, seconds), ``checkpoints``, ``scores``
        (``{model: {test: mIoU}}``) and `gate_results` (the evaluation stages' scores, the
        gate's verdicts, the promoted model); also written to ``<output>/results.json``.
    """
    planned = plan_local_run(spec, output, roots)
    start_ray()
    seconds = _run_stages(planned, spec, output, progress, echo)
    checkpoints = trained_checkpoints(planned)
    results = score(checkpoints, tests)
    summary = {
        "stages": [
            {"name": s.name, "kind": s.kind, "outputs": s.outputs, "seconds": seconds.get(s.name)}
            for s in planned
        ],
        "checkpoints": checkpoints,
        "scores": {m: {t: r["miou"] for t, r in by_test.items()} for m, by_test in results.items()},
        **gate_results(planned),
    }
    output.mkdir(parents=True, exist_ok=True)
    (output / "results.json").write_text(json.dumps(summary, indent=2))
    for model, by_test in summary["scores"].items():
        shown = ", ".join(f"{t} {100 * v:.1f}" for t, v in by_test.items())
        echo(f"{model:20s} mIoU {shown}" if shown else model)
    for report in evaluation_reports(planned):
        if report.verdict is not None:
            for line in describe(report.verdict):
                echo(line)
    return summary


def _run_stages(
    planned: list[PlannedStage],
    spec: RunSpec,
    output: Path,
    progress: bool,
    echo: Callable[[str], None],
) -> dict[str, float]:
    """Run the job stages in order (until a gate with ``stop_on_fail`` stops the run); returns
    each stage's seconds."""
    seconds = {}
    with tracked_run(output, spec.name) as tracking:
        for stage in planned:
            if stage.given:
                continue
            echo(f"[{stage.index + 1}/{len(planned)}] {stage.name} ({stage.kind})")
            started = time.perf_counter()
            run_stage(stage, progress, tracking)
            seconds[stage.name] = round(time.perf_counter() - started, 1)
            stop = gate_stop(stage, spec.gate)
            if stop is not None:
                echo(stop)
                break
    return seconds


def parse_test(text: str) -> tuple[str, DataSource]:
    """``NAME=FORMAT:ROOT[:SPLIT]`` (e.g. ``heldout=cityscapes:data/synth:test``)."""
    name, _, rest = text.partition("=")
    parts = rest.split(":")
    if not name or len(parts) not in (2, 3):
        raise ConfigError(f"--test {text!r}: expected NAME=FORMAT:ROOT[:SPLIT]")
    split = parts[2] if len(parts) == 3 else "val"
    try:
        source = DataSource.model_validate({"format": parts[0], "root": parts[1], "split": split})
    except ValidationError as exc:
        raise ConfigError(f"--test {text!r}: {exc.errors()[0]['msg']}") from exc
    return name, source


def main(spec_path: str, output: str, roots: Sequence[str], tests: Sequence[str]) -> int:
    """``selftrain run``: the spec file, the output folder, the data roots, the test sets."""
    spec = load_config(spec_path, RunSpec)
    root_paths = [Path(r).expanduser().resolve() for r in roots] or [Path.cwd()]
    test_sets = dict(parse_test(t) for t in tests)
    folder = Path(output).expanduser().resolve()
    output_folder(folder, "--output")
    summary = run_local(spec, folder, root_paths, test_sets)
    print(json.dumps(summary), flush=True)
    return 0
