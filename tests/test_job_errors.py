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


def test_resource_problem_names_what_no_node_or_the_whole_cluster_can_hold():
    from jobs.ray_entry import resource_problem

    two_cpu_nodes = [{"CPU": 2.0, "memory": 1e9}, {"CPU": 2.0}]
    assert resource_problem({"CPU": 1.0}, 4, two_cpu_nodes, "training worker") is None
    assert resource_problem({"CPU": 1.0, "GPU": 1.0}, 1, two_cpu_nodes, "training worker") == (
        "no node of the cluster can hold one training worker (CPU 1, GPU 1); its alive nodes "
        "offer: CPU 2, GPU 0; CPU 2, GPU 0"
    )
    assert resource_problem({"CPU": 1.5}, 3, two_cpu_nodes, "teacher actor") == (
        "3 teacher actors need CPU 4.5 (CPU 1.5 each), but the cluster's alive nodes offer CPU 4 "
        "in all"
    )
    assert resource_problem({"CPU": 1.0}, 1, [], "training worker").endswith("offer: none")


@pytest.mark.parametrize(
    ("script", "text", "reason"),
    [
        (
            "train.py",
            "run_name: gpu\nstorage_path: {tmp}/runs\n"
            "labeled: {{format: cityscapes, root: {tmp}}}\n"
            "gpus_per_worker: 1\ncpus_per_worker: 0.5\n",
            "no node of the cluster can hold one training worker (CPU 0.5, GPU 1)",
        ),
        (
            "label.py",
            "teacher_checkpoint: {tmp}/ck.pt\nsource: {{format: folder, root: {tmp}/images}}\n"
            "store: {tmp}/store.zarr\nnum_actors: 64\ncpus_per_actor: 1\n",
            "64 teacher actors need CPU 64 (CPU 1 each)",
        ),
    ],
)
def test_a_request_no_node_can_meet_fails_with_the_reason(tmp_path, script, text, reason):
    from service_support import write_checkpoint, write_scenes

    write_scenes(tmp_path, n=1, size=(64, 64))
    write_scenes(tmp_path / "images", n=1, size=(64, 64))
    write_checkpoint(tmp_path / "ck.pt")
    config = tmp_path / "job.yaml"
    config.write_text(text.format(tmp=tmp_path))
    done = run_job(script, config)
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"jobs/{script}: error: ") and reason in last, last
