"""Specific errors raised by the core library.

Every error names the file or value it is about and the problem, so a job can turn it into a per-row
status and the control plane into a 4xx without guessing.

Every error survives a pickle round trip as itself, with its attributes: Ray rebuilds an exception
raised in a worker from its pickle, and the default pickling of an exception calls its class with
``self.args`` (the one formatted message), which fails for any ``__init__`` that takes other
arguments. ``SelfTrainError.__reduce__`` rebuilds without calling ``__init__``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _rebuild(cls: type[BaseException], args: tuple, state: dict[str, Any]) -> BaseException:
    """An exception of ``cls`` with these ``args`` and attributes, ``__init__`` not called."""
    error = cls.__new__(cls, *args)
    error.args = args
    error.__dict__.update(state)
    return error


def one_line(error: BaseException) -> str:
    """An error's message and its notes (``add_note``) on one line, for a command's last word."""
    parts = [str(error), *getattr(error, "__notes__", ())]
    return " ".join("; ".join(parts).split())


def project_error(error: BaseException) -> SelfTrainError | None:
    """The project error that ``error`` is, or that caused it: Ray delivers an error raised in a
    worker inside its own (a task's ``RayTaskError`` and its ``cause``, Ray Data's
    ``UserCodeException`` raised from it, Ray Train's ``WorkerGroupError`` with its
    ``worker_failures``, a ``ControllerError``'s ``controller_failure``)."""
    seen: set[int] = set()
    todo = [error]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, SelfTrainError):
            return current
        linked = [current.__cause__, getattr(current, "cause", None)]
        linked.append(getattr(current, "controller_failure", None))
        linked += list(getattr(current, "worker_failures", {}).values())
        todo += [e for e in linked if isinstance(e, BaseException)]
    return None


class SelfTrainError(Exception):
    """Base class of every error the project raises on purpose.

    A project error is a verdict on its input (a file, a value, a store): running the same work
    again gives the same error, so the jobs do not retry it (jobs.train_failures).
    """

    def __reduce__(self) -> tuple:
        # The attributes (path, problem, notes added with add_note, ...) travel as they are.
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))


class DataError(SelfTrainError):
    """A file on disk cannot be used as it is."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class CorruptImageError(DataError):
    """An image file is empty, truncated or not an image at all."""


class ImageTooLargeError(DataError):
    """An image declares more pixels than may be decoded."""


class InvalidLabelError(DataError):
    """A label map has the wrong shape, channels or ids."""


class SizeMismatchError(DataError):
    """A label map's size differs from its image's size."""


class EmptyDatasetError(DataError):
    """A folder that should hold samples holds none."""


class UnknownModelError(SelfTrainError, ValueError):
    """A model name that the factory does not know."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = sorted(known)
        super().__init__(f"unknown model {name!r}; known models: {', '.join(sorted(known))}")


class CheckpointError(DataError):
    """A checkpoint file is missing fields or does not fit the model asked for."""


class StoreError(DataError):
    """A label store is missing, malformed, or belongs to another teacher."""


class ConfigError(SelfTrainError, ValueError):
    """A configuration value that cannot work (named in the message)."""


class StoreVersionError(StoreError):
    """A label store written in another format version than this code reads."""
