"""Where a path may lead, checked where it enters and again where it is used.

A run's paths (data sources, label stores, checkpoints, init and encoder weights, outputs) are
resolved once, when the run is created, into absolute paths free of links inside the allowed roots
(``confine``). By the time a job or the service opens one, a folder on the way may have been swapped
for a link to somewhere else; ``check_confined`` checks again at use that the path still lies inside
a root and that nothing on its way from the root is a link, and ``read_regular`` reads a file
without following a link, only when it is a regular file (a named pipe would block the reader for
good) and only up to a size.

A job learns its roots from its config's ``allowed_roots`` (the service fills them in for every
job it submits); a job run by hand without them is not confined.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from core.errors import DataError


class PathNotAllowedError(DataError):
    """A path outside the allowed roots, reached through a link, or not usable as a path."""


class UnsafeFileError(DataError):
    """A file that is not a regular file (a link, a named pipe, a device), or over its cap."""


def confine(value: str | Path, roots: Sequence[Path]) -> Path:
    """The absolute, link-free form of ``value`` if it lies inside one of ``roots`` (at creation).

    Relative paths are taken relative to the first root. ``..`` is refused outright (even where it
    would stay inside), and so is a link that leads out of the roots; a link that stays inside is
    resolved, so what is recorded is the real path.

    Raises:
        PathNotAllowedError: NUL or ``..`` in the path, a name the OS cannot hold, or outside.
    """
    text = str(value)
    if "\0" in text:
        raise PathNotAllowedError(repr(text), "must not contain a NUL character")
    path = Path(text).expanduser()
    if ".." in path.parts:
        raise PathNotAllowedError(text, "must not contain '..'")
    if not path.is_absolute():
        path = Path(roots[0]) / path
    try:
        real = path.resolve()
        real.exists()  # raises for names the OS cannot hold (too long)
    except OSError as exc:
        raise PathNotAllowedError(text, f"is not a usable path ({exc.strerror})") from exc
    if _root_of(real, roots) is None:
        shown = ", ".join(str(r) for r in roots)
        raise PathNotAllowedError(text, f"is outside the allowed folders ({shown})")
    return real


def check_confined(path: str | Path, roots: Sequence[Path] | None) -> Path:
    """``path`` (as recorded at creation: absolute and link-free) if it still lies inside one of
    ``roots`` and no folder or file on its way down from that root is a link now (at use).

    The part of the path that does not exist yet (an output a job is about to create) is not
    checked beyond its name; the part that exists must be reached without a link. ``roots`` None:
    not confined (a job run by hand), only made absolute.

    Raises:
        PathNotAllowedError: Outside the roots, or a link on the way.
    """
    path = Path(path)
    if roots is None:
        return path.absolute()
    if not path.is_absolute() or ".." in path.parts:
        raise PathNotAllowedError(path, "must be an absolute path without '..'")
    root = _root_of(path, roots)
    if root is None:
        shown = ", ".join(str(r) for r in roots)
        raise PathNotAllowedError(path, f"is outside the allowed folders ({shown})")
    current = root
    for part in path.relative_to(root).parts:
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            break  # not created yet: nothing below it exists either
        except OSError as exc:
            raise PathNotAllowedError(current, f"cannot be checked ({exc.strerror})") from exc
        if stat.S_ISLNK(mode):
            raise PathNotAllowedError(
                path, f"{current} is a link (to {os.readlink(current)}); refused at use"
            )
    return path


class ConfinedJob(Protocol):
    allowed_roots: list[str] | None

    def paths(self) -> list[tuple[str, str]]: ...


def check_job_paths(config: ConfinedJob) -> None:
    """Check every path of a job config (``config.paths()``) against its ``allowed_roots`` at
    use (``check_confined``); a config without roots is not confined.

    Raises:
        PathNotAllowedError: The first path that is outside or reached through a link, with its
            field.
    """
    if config.allowed_roots is None:
        return
    roots = [Path(root) for root in config.allowed_roots]
    for field_name, value in config.paths():
        try:
            check_confined(value, roots)
        except PathNotAllowedError as exc:
            raise PathNotAllowedError(value, f"({field_name}) {exc.problem}") from exc


def read_regular(path: str | Path, max_bytes: int) -> bytes:
    """The bytes of ``path``, opened without following a link and without blocking, when it is a
    regular file of at most ``max_bytes``.

    Raises:
        FileNotFoundError: There is no such file (callers that wait for a file expect it).
        UnsafeFileError: A link, a named pipe or anything else that is not a regular file, or a
            file over ``max_bytes``.
        DataError: Any other error reading it, named.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            problem = "is a link; refused (files are read without following links)"
            raise UnsafeFileError(path, problem) from exc
        raise DataError(path, f"cannot open ({exc.strerror})") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeFileError(path, f"is {_kind(info.st_mode)}, not a regular file")
        if info.st_size > max_bytes:
            raise UnsafeFileError(path, f"is {info.st_size} bytes, over its cap of {max_bytes}")
        os.set_blocking(fd, True)
        chunks, left = [], max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as exc:
        raise DataError(path, f"cannot read ({exc.strerror})") from exc
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > max_bytes:  # grew while being read
        raise UnsafeFileError(path, f"is over its cap of {max_bytes} bytes")
    return data


def _root_of(path: Path, roots: Sequence[Path]) -> Path | None:
    for root in roots:
        root = Path(root)
        if path == root or root in path.parents:
            return root
    return None


def _kind(mode: int) -> str:
    kinds = {
        stat.S_ISFIFO: "a named pipe",
        stat.S_ISDIR: "a folder",
        stat.S_ISSOCK: "a socket",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
    }
    return next((name for test, name in kinds.items() if test(mode)), "not a regular file")
