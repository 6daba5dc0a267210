"""Issue 26 item 6, errors in one line: every project exception survives a pickle round trip (Ray
rebuilds a worker's exception from its pickle), and every entry point ends a known failure with
one line naming the input and a non-zero exit code."""

from __future__ import annotations

import importlib
import inspect
import pickle
import pkgutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "jobs", "services", "selftrain")

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
