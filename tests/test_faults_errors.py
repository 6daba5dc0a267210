"""Issue 26 item 6, errors in one line: every project exception survives a pickle round trip (Ray
rebuilds a worker's exception from its pickle), and every entry point ends a known failure with
one line naming the input and a non-zero exit code."""

from __future__ import annotations

import importlib
import inspect
import json
import pickle
import pkgutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "jobs", "services", "selftrain")
# Alembic's migration scripts run only inside Alembic (importing them alone fails): no exceptions.
NOT_IMPORTED = ("services.migrations",)

# Constructor arguments by parameter name, for the exceptions the walk finds. A new exception
# whose __init__ takes another required argument fails the walk until its name is added here.
SAMPLE_ARGUMENTS = {
    "path": "/data/x.png",
    "problem": "truncated",
    "name": "nope",
    "known": ["small", "fast_scnn"],
    "problems": [("teacher.train.epochs", "must be > 0")],
    "message": "something failed",
}


def project_exceptions() -> list[type[BaseException]]:
    """Every exception class defined in the project's packages (all their modules imported)."""
    for package in PACKAGES:
        module = importlib.import_module(package)
        for info in pkgutil.walk_packages(module.__path__, f"{package}."):
            if not info.name.startswith(NOT_IMPORTED):
                importlib.import_module(info.name)
    found, todo = set(), [BaseException]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in found:
                found.add(sub)
                todo.append(sub)
    return sorted(
        (cls for cls in found if cls.__module__.split(".")[0] in PACKAGES),
        key=lambda cls: f"{cls.__module__}.{cls.__qualname__}",
    )


def sample(cls: type[BaseException]) -> BaseException:
    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
    kwargs = {}
    for parameter in parameters:
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if parameter.default is parameter.empty:
            if parameter.name not in SAMPLE_ARGUMENTS:
                pytest.fail(f"{cls.__qualname__}: add a sample for argument {parameter.name!r}")
            kwargs[parameter.name] = SAMPLE_ARGUMENTS[parameter.name]
    if not kwargs and any(p.kind == p.VAR_POSITIONAL for p in parameters):
        return cls(SAMPLE_ARGUMENTS["message"])
    return cls(**kwargs)


def test_the_walk_finds_the_project_exceptions():
    names = {cls.__qualname__ for cls in project_exceptions()}
    expected = {"SelfTrainError", "DataError", "StoreError", "SpecError", "ConfigError"}
    assert expected <= names, names


@pytest.mark.parametrize("cls", project_exceptions(), ids=lambda cls: cls.__qualname__)
def test_every_project_exception_survives_a_pickle_round_trip(cls):
    error = sample(cls)
    error.add_note("while labeling shard 3")
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is cls
    assert str(back) == str(error)
    assert back.args == error.args
    assert vars(back) == vars(error)  # path, problem, problems, notes ...


def test_a_spec_that_is_not_utf8_is_one_line_naming_it(tmp_path, capsys):
    from selftrain.cli import main as cli_main

    spec = tmp_path / "spec.yaml"
    spec.write_bytes(b"name: r\n\xff\xfe")
    assert cli_main(["run", "--spec", str(spec), "--output", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"selftrain run: {spec}: not UTF-8 text (byte 0xff at offset 8)"
    ]


def test_an_output_that_is_a_file_is_one_line_naming_it(tmp_path, capsys):
    from service_support import small_run_spec

    from selftrain.cli import main as cli_main

    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(small_run_spec(tmp_path / "data")))
    output = tmp_path / "out"
    output.write_text("not a folder")
    assert cli_main(["run", "--spec", str(spec), "--output", str(output)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"selftrain run: --output {output}: is a file, not a folder"
    ]
    assert output.read_text() == "not a folder"


def train_job_config(tmp_path: Path, storage_path: Path) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(
        f"run_name: r\nstorage_path: {storage_path}\n"
        f"labeled: {{format: folder, root: {tmp_path}}}\nmodel: small\n"
    )
    return path


def test_the_train_job_ends_a_job_config_that_is_not_utf8_in_one_line(tmp_path, capsys):
    from jobs.ray_entry import exit_code
    from jobs.train import main as train_main

    path = tmp_path / "job.yaml"
    path.write_bytes("run_name: r\nmodel: smäll\n".encode("latin-1"))
    assert exit_code(lambda: train_main(["--config", str(path)]), "jobs/train.py") == 2
    assert capsys.readouterr().err.splitlines() == [
        f"jobs/train.py: error: {path}: not UTF-8 text (byte 0xe4 at offset 21)"
    ]


def test_the_train_job_ends_a_storage_path_that_is_a_file_in_one_line(tmp_path, capsys):
    from jobs.ray_entry import exit_code
    from jobs.train import main as train_main

    storage = tmp_path / "runs"
    storage.write_text("")
    path = train_job_config(tmp_path, storage)
    assert exit_code(lambda: train_main(["--config", str(path)]), "jobs/train.py") == 2
    assert capsys.readouterr().err.splitlines() == [
        f"jobs/train.py: error: storage_path {storage}: is a file, not a folder"
    ]


def test_a_project_error_inside_rays_wrappers_is_one_line_and_others_are_raised(capsys):
    from ray.exceptions import RayTaskError
    from ray.train.v2.api.exceptions import WorkerGroupError

    from core.errors import CorruptImageError
    from jobs.ray_entry import exit_code

    error = CorruptImageError("/data/7.png", "truncated PNG")
    error.add_note("while labeling shard 1")
    in_task = RayTaskError("label_batch", "Traceback ...", error)
    in_group = WorkerGroupError("training failed", {1: in_task})

    def fails(exception: BaseException):
        def main() -> int:
            raise exception

        return main

    assert exit_code(fails(in_group), "jobs/x.py") == 2
    assert capsys.readouterr().err.splitlines() == [
        "jobs/x.py: error: /data/7.png: truncated PNG; while labeling shard 1"
    ]
    with pytest.raises(WorkerGroupError):
        exit_code(fails(WorkerGroupError("lost", {0: RuntimeError("node died")})), "jobs/x.py")


def test_a_project_error_in_a_training_worker_is_not_retried():
    from ray.train import FailureConfig
    from ray.train.v2._internal.execution.failure_handling.failure_policy import FailureDecision
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer
    from ray.train.v2.api.exceptions import WorkerGroupError

    from core.errors import CorruptImageError
    from jobs.train_failures import ProjectErrorsRaise

    # ProjectErrorTrainer hands its policy to the call where Ray Train's fit passes its own.
    fit = inspect.getsource(DataParallelTrainer.fit)
    assert "self._initialize_and_run_controller(" in fit and "failure_policy=" in fit
    policy = ProjectErrorsRaise(FailureConfig(max_failures=3))
    corrupt = CorruptImageError("/data/7.png", "truncated PNG")
    assert policy.make_decision(WorkerGroupError("x", {0: corrupt})) == FailureDecision.RAISE
    lost = WorkerGroupError("x", {0: RuntimeError("node died")})
    assert [policy.make_decision(lost) for _ in range(4)] == [FailureDecision.RETRY] * 3 + [
        FailureDecision.RAISE
    ]
