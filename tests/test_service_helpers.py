"""Shared pieces of the service tests: a job backend in memory, settings in a temporary folder, and
small real artifacts (synthetic scenes, a checkpoint of the "small" model, a label store).

Imported by the other tests/test_service*.py and tests/test_dashboard.py files.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from services.backend import JobInfo
from services.settings import Settings

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class FakeBackend:
    """Jobs in memory: ``submit`` records them as PENDING; the test moves them on with ``set``.

    ``on_submit(submission_id, entrypoint)`` runs at submit time (e.g. to write a job's outputs).
    """

    def __init__(self, on_submit: Callable[[str, str], None] | None = None) -> None:
        self.jobs: dict[str, dict] = {}
        self.submits: list[str] = []
        self.stops: list[str] = []
        self.on_submit = on_submit
        self.down = False

    def _check_up(self) -> None:
        from services.backend import ClusterUnavailableError

        if self.down:
            raise ClusterUnavailableError("fake cluster is down")

    def info(self, submission_id: str) -> JobInfo | None:
        self._check_up()
        job = self.jobs.get(submission_id)
        if job is None:
            return None
        return JobInfo(job["status"], job["message"], job["start"], job["end"])

    def submit(self, submission_id: str, entrypoint: str, metadata: dict[str, str]) -> None:
        self._check_up()
        self.submits.append(submission_id)
        if submission_id in self.jobs:
            return
        self.jobs[submission_id] = {
            "status": "PENDING",
            "message": "Job has not started yet.",
            "start": None,
            "end": None,
            "entrypoint": entrypoint,
            "metadata": metadata,
            "logs": f"Running entrypoint for job {submission_id}: {entrypoint}\n",
        }
        if self.on_submit is not None:
            self.on_submit(submission_id, entrypoint)

    def set(self, submission_id: str, status: str, message: str = "", logs: str = "") -> None:
        job = self.jobs[submission_id]
        job["status"], job["message"] = status, message or job["message"]
        job["start"] = job["start"] or 1_700_000_000.0
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            job["end"] = 1_700_000_060.0
        job["logs"] += logs

    def stop(self, submission_id: str) -> None:
        self._check_up()
        self.stops.append(submission_id)
        self.set(submission_id, "STOPPED", "Job was intentionally stopped.")

    def logs(self, submission_id: str) -> str:
        self._check_up()
        return self.jobs[submission_id]["logs"]


def make_settings(root: Path, **overrides) -> Settings:
    """Settings with one data root ``root/data`` and the workdir ``root/work``."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    values = {
        "api_token": TOKEN,
        "data_roots": [root / "data"],
        "workdir": root / "work",
        "poll_interval_s": 0.05,
        **overrides,
    }
    return Settings(**values)


def write_scenes(root: Path, n: int = 4, size: tuple[int, int] = (64, 128), split: str = "train"):
    """Synthetic Cityscapes-layout scenes under ``root``; returns the image paths."""
    from core.synth import write_synthetic_dataset

    return write_synthetic_dataset(root, n=n, size=size, split=split)


def write_checkpoint(path: Path) -> Path:
    """A checkpoint of an untrained "small" model with the Cityscapes classes."""
    import torch

    from core.checkpoint import save_checkpoint
    from core.labels import CITYSCAPES
    from core.models import build_model

    torch.manual_seed(0)
    model = build_model("small", CITYSCAPES.num_classes)
    return save_checkpoint(path, model, "small", {}, CITYSCAPES, epoch=1)


def write_store(path: Path, image_paths: list[Path], checkpoint: str = "ck.pt") -> Path:
    """A label store whose images are all labeled: the left half road (0), the right half sky
    (10), the top row ignored."""
    from core.centroids import find_centroids
    from core.io import read_image
    from core.labels import CITYSCAPES
    from core.store import LabelStore

    store = LabelStore.create(
        path,
        [str(p) for p in image_paths],
        None,
        CITYSCAPES,
        teacher={"checkpoint": checkpoint, "sha256": "0" * 64, "model_name": "small"},
        settings={"mode": "whole"},
    )
    run = store.start_run({})
    for i, image_path in enumerate(image_paths):
        height, width = read_image(image_path).shape[:2]
        label = np.zeros((height, width), np.uint8)
        label[:, width // 2 :] = 10
        label[0] = 255
        confidence = np.full((height, width), 200, np.uint8)
        store.write(i, label, confidence, find_centroids(label), run=run)
    n = len(image_paths)
    store.set_progress(run, "finished", done=n, failed=0, total=n, images_per_s=12.5)
    return path


def write_metrics(folder: Path, epochs: int) -> Path:
    """A training job's metrics.jsonl with ``epochs`` records (loss falling, mIoU rising)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        {
            "epoch": e,
            "loss": round(2.0 / (e + 1), 4),
            "lr": 0.01,
            "crop_size": 64 if e % 2 else 48,
            "batch_size": 4,
            "images_per_s": 10.0,
            "val_miou": round(0.1 * (e + 1), 4),
        }
        for e in range(epochs)
    ]
    path = folder / "metrics.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def labeled_source(root: Path) -> dict:
    return {"format": "cityscapes", "root": str(root), "split": "train"}


def small_run_spec(data: Path, **extra) -> dict:
    """A run spec over scenes in ``data/labeled`` and ``data/unlabeled`` with tiny crops."""
    train = {
        "model": "small",
        "labeled": labeled_source(data / "labeled"),
        "epochs": 2,
        "schedule": {"crop_sizes": [32, 48]},
    }
    return {
        "name": "tiny",
        "teacher": {"train": train},
        "label": {"sources": [{"format": "folder", "root": str(data / "unlabeled")}]},
        "student": {"train": train},
        **extra,
    }


def fake_job_outputs(entrypoint: str) -> None:
    """Write what the job an entry point names would leave: a checkpoint and metrics for a training
    job (2 epochs), a label store over the source's images for a label job."""
    import shlex

    from core.configs import LabelJobConfig, TrainJobConfig, load_config
    from core.datasets import open_source

    argv = shlex.split(entrypoint)
    config_path = Path(argv[argv.index("--config") + 1])
    if argv[1].endswith("label.py"):
        label = load_config(config_path, LabelJobConfig)
        images = [Path(p) for p in open_source(label.source).image_paths()]
        write_store(Path(label.store), images, label.teacher_checkpoint)
        return
    train = load_config(config_path, TrainJobConfig)
    folder = Path(train.storage_path) / train.run_name
    write_checkpoint(folder / "best.pt")
    write_metrics(folder, train.epochs)


class SucceedingBackend(FakeBackend):
    """A cluster on which every job writes its outputs at once and succeeds."""

    def __init__(self) -> None:
        super().__init__(on_submit=self._run)

    def _run(self, submission_id: str, entrypoint: str) -> None:
        fake_job_outputs(entrypoint)
        self.set(submission_id, "SUCCEEDED", "Job finished successfully.", logs="done\n")
