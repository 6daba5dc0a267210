"""core.confine: paths inside the roots at creation and at use, files read without following
links, only when regular and up to a size; core.runfiles reads a damaged metrics file line by
line."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from service_support import write_metrics

from core.configs import DataSource, LabelJobConfig
from core.confine import (
    PathNotAllowedError,
    UnsafeFileError,
    check_confined,
    check_job_paths,
    confine,
    read_regular,
)
from core.runfiles import RunFiles, read_metrics_file


@pytest.fixture
def root(tmp_path) -> Path:
    (tmp_path / "root" / "data").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    return tmp_path / "root"


def test_confine_resolves_inside_and_refuses_outside_dots_and_nul(root):
    assert confine("data", [root]) == root / "data"
    (root / "inner-link").symlink_to(root / "data")
    assert confine(root / "inner-link", [root]) == root / "data"  # recorded as its real path
    (root / "out-link").symlink_to(root.parent / "outside")
    for value, problem in [
        (root / "out-link", "is outside the allowed folders"),
        ("/etc/passwd", "is outside the allowed folders"),
        ("data/../data", "must not contain '..'"),
        ("da\0ta", "must not contain a NUL character"),
    ]:
        with pytest.raises(PathNotAllowedError, match=problem):
            confine(value, [root])


def test_a_folder_swapped_for_a_link_after_creation_is_refused_at_use(root):
    run = confine("data/run-1", [root])  # does not exist yet: fine at creation and at use
    assert check_confined(run / "teacher" / "best.pt", [root]) == run / "teacher" / "best.pt"
    (root.parent / "outside" / "stolen").mkdir()
    run.symlink_to(root.parent / "outside" / "stolen")
    with pytest.raises(PathNotAllowedError) as error:
        check_confined(run / "teacher" / "best.pt", [root])
    assert str(error.value) == (
        f"{run / 'teacher' / 'best.pt'}: {run} is a link (to {root.parent / 'outside' / 'stolen'});"
        " refused at use"
    )
    with pytest.raises(PathNotAllowedError, match="is outside the allowed folders"):
        check_confined(root.parent / "outside" / "x", [root])


def test_a_job_config_names_the_field_whose_path_is_refused(root):
    config = LabelJobConfig(
        teacher_checkpoint=str(root / "data" / "teacher.pt"),
        source=DataSource(format="folder", root=str(root / "data")),
        store=str(root / "data" / "run" / "stores" / "label-0.zarr"),
        allowed_roots=[str(root)],
    )
    check_job_paths(config)  # nothing exists yet, nothing is a link: fine
    (root / "data" / "run").symlink_to(root.parent / "outside")
    with pytest.raises(PathNotAllowedError, match=r"\(store\) .*/data/run is a link"):
        check_job_paths(config)
    check_job_paths(config.model_copy(update={"allowed_roots": None}))  # by hand: not confined


def test_read_regular_refuses_a_pipe_at_once_a_link_and_a_file_over_its_cap(tmp_path):
    fifo = tmp_path / "metrics.jsonl"
    os.mkfifo(fifo)
    started = time.monotonic()
    with pytest.raises(UnsafeFileError, match="is a named pipe, not a regular file"):
        read_regular(fifo, 100)
    assert time.monotonic() - started < 1.0  # no writer: a plain open would wait for good
    (tmp_path / "real").write_bytes(b"x" * 101)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(UnsafeFileError, match="is a link; refused"):
        read_regular(tmp_path / "link", 1000)
    with pytest.raises(UnsafeFileError, match="is 101 bytes, over its cap of 100"):
        read_regular(tmp_path / "real", 100)
    assert read_regular(tmp_path / "real", 101) == b"x" * 101
    with pytest.raises(FileNotFoundError):
        read_regular(tmp_path / "missing", 100)


def test_damaged_metrics_lines_are_skipped_and_named(tmp_path):
    path = write_metrics(tmp_path / "run", 3)
    with path.open("ab") as f:
        f.write(b'{"epoch": 3, "phase": "jo\xff\xfe"}\n')  # line 4: not UTF-8
        f.write(b"\x00garbage\n")  # line 5: not JSON
        f.write(b'{"epoch": 4}\n')  # line 6: not a complete row
    read = read_metrics_file(path)
    assert [row.epoch for row in read.rows] == [0, 1, 2]
    assert read.skipped == [4, 5, 6]
    assert read.problem() == f"{path}: skipped line(s) 4, 5, 6: not a metrics row"
    # What the training job reads last: its summary, from the same file.
    assert RunFiles(path.parent).summary().epochs_done == 3
    assert read_metrics_file(tmp_path / "none.jsonl").rows == []
