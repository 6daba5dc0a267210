"""A job given a bad config, or one that names what does not exist, says so in one line on stderr
and exits with code 2 (no traceback): what `ray job logs` shows a user is the reason itself."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_job(script: str, config: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, f"jobs/{script}", "--config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("script", "text", "reason"),
    [
        ("label.py", None, "cannot read config (No such file or directory)"),
        ("train.py", "epochs: [\n", "not valid yaml: while parsing a flow node"),
        (
            "student.py",
            "run_name: x\nstorage_path: /tmp/r\nlabeled: {format: folder, root: /tmp}\n"
            'epochs: "ten"\nlr: -1\n',
            "epochs: Input should be a valid integer; lr: Input should be greater than 0",
        ),
        (
            "label.py",
            "teacher_checkpoint: /nonexistent/teacher.pt\nsource: {format: folder, root: /tmp}\n"
            "store: /tmp/never.zarr\n",
            "/nonexistent/teacher.pt: no such checkpoint file",
        ),
    ],
)
def test_a_bad_config_is_one_line_and_exit_code_2(tmp_path, script, text, reason):
    config = tmp_path / "job.yaml"
    if text is not None:
        config.write_text(text)
    done = run_job(script, config)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"jobs/{script}: error: ")
    assert reason in lines[0]
