"""The run folder: what a training run leaves at stable paths, and how to read it back.

Every training run (teacher or student) writes into ``<storage_path>/<run_name>/``:

- ``last.pt``: the model after the latest epoch (core.checkpoint format, loadable with
  ``core.checkpoint.load_model``);
- ``best.pt``: the model of the best epoch by validation mIoU; a run without a validation set keeps
  its latest model here too;
- ``metrics.jsonl``: one ``MetricsRow`` per epoch, as JSON lines;
- ``ema.pt``: an online student's EMA teacher after the latest epoch (model only; core.online).

The training job writes these files, the control plane, the demo and the benchmarks read them:
all of them through this module, so the names and the row's fields live in one place.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

BEST_FILE = "best.pt"
LAST_FILE = "last.pt"
EMA_FILE = "ema.pt"
METRICS_FILE = "metrics.jsonl"

log = logging.getLogger(__name__)


class MetricsRow(BaseModel):
    """What one epoch of a training run measured.

    Attributes:
        epoch: 0-based epoch index.
        phase: ``joint``, or ``pretrain`` / ``finetune`` in mode ``pretrain_finetune``.
        loss: Mean training loss over the epoch's steps.
        lr: Learning rate of parameter group 0 after the epoch's last step.
        crop_size: Side of the square crops the epoch trained on.
        batch_size: Samples per step on each rank.
        n_real: Real samples in the epoch.
        n_pseudo: Pseudo samples in the epoch.
        steps: Optimizer steps of the epoch on each rank.
        images_per_s: Samples per second of wall time, all ranks together.
        seconds: Wall time of the epoch's training, data loading included.
        cpu_seconds: CPU time of rank 0's process in the epoch.
        val_miou: Validation mIoU after the epoch; None when not validated.
        unlabeled_confident_share: Online students: the share of the unlabeled crops' pixels
            whose teacher label counted (confident enough, or pasted).
        pseudo_class_share: Online students: each class's share of the counted pixels.
        labeled_class_share: Online students: each class's share of the labeled set's pixels
            (the prior the pseudo shares are held against).
        class_thresholds: Online students: each class's confidence threshold after the epoch.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    epoch: int
    phase: str
    loss: float
    lr: float
    crop_size: int
    batch_size: int
    n_real: int
    n_pseudo: int
    steps: int | None = None
    images_per_s: float
    seconds: float
    cpu_seconds: float
    val_miou: float | None = None
    unlabeled_confident_share: float | None = None
    pseudo_class_share: dict[str, float] | None = None
    labeled_class_share: dict[str, float] | None = None
    class_thresholds: dict[str, float] | None = None


# A metrics file holds one row of about 300 bytes per epoch; MAX_EPOCHS (100,000) rows fit.
MAX_METRICS_BYTES = 64 * 2**20


@dataclass(frozen=True)
class MetricsRead:
    """What a ``metrics.jsonl`` file held.

    Attributes:
        path: The file.
        rows: Its complete rows, in file order.
        skipped: 1-based numbers of the lines that were not a row (not UTF-8, not JSON, not a
            complete row), each skipped.
    """

    path: str
    rows: list[MetricsRow]
    skipped: list[int]

    def problem(self) -> str | None:
        """One line naming the file and the lines it skipped; None when it skipped none."""
        if not self.skipped:
            return None
        shown = ", ".join(str(n) for n in self.skipped[:10])
        more = f" and {len(self.skipped) - 10} more" if len(self.skipped) > 10 else ""
        return f"{self.path}: skipped line(s) {shown}{more}: not a metrics row"


def read_metrics_file(path: str | Path) -> MetricsRead:
    """The rows of a ``metrics.jsonl`` file, and the lines skipped (none while there is no file).

    The file is opened without following a link and read only when it is a regular file of at
    most ``MAX_METRICS_BYTES``. A line that is not a complete row (not UTF-8, garbage, a row the
    job is still writing) is skipped and counted in ``skipped``, so a reader never fails on a
    damaged line.

    Raises:
        UnsafeFileError: A link, a named pipe or a file over the cap where the file should be.
        DataError: It cannot be read.
    """
    from core.confine import read_regular

    try:
        data = read_regular(path, MAX_METRICS_BYTES)
    except FileNotFoundError:
        return MetricsRead(str(path), [], [])
    rows, skipped = [], []
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            rows.append(MetricsRow.model_validate_json(line.decode("utf-8")))
        except (UnicodeDecodeError, ValidationError):
            skipped.append(number)
    return MetricsRead(str(path), rows, skipped)


def read_metrics(path: str | Path) -> list[MetricsRow]:
    """The rows of a ``metrics.jsonl`` file (empty while there is none); damaged lines are
    skipped with a warning that names the file and the lines (``read_metrics_file``).

    Raises:
        UnsafeFileError: A link, a named pipe or a file over the cap where the file should be.
        DataError: It cannot be read.
    """
    read = read_metrics_file(path)
    if read.skipped:
        log.warning("%s", read.problem())
    return read.rows


@dataclass(frozen=True)
class RunFiles:
    """The stable files of one run folder.

    Attributes:
        directory: ``<storage_path>/<run_name>``.
    """

    directory: Path

    @classmethod
    def of(cls, storage_path: str | Path, run_name: str) -> RunFiles:
        """The run folder ``<storage_path>/<run_name>`` (made absolute)."""
        return cls(Path(storage_path).expanduser().resolve() / run_name)

    @property
    def best(self) -> Path:
        return self.directory / BEST_FILE

    @property
    def last(self) -> Path:
        return self.directory / LAST_FILE

    @property
    def ema(self) -> Path:
        return self.directory / EMA_FILE

    @property
    def metrics(self) -> Path:
        return self.directory / METRICS_FILE

    def checkpoint(self) -> Path | None:
        """The checkpoint to use from this run: ``best.pt``, else ``last.pt``; None before the
        first epoch ended."""
        for path in (self.best, self.last):
            if path.is_file():
                return path
        return None

    def read_metrics(self) -> list[MetricsRow]:
        return read_metrics(self.metrics)

    def write(self, state: Path, history: list[MetricsRow], is_best: bool) -> None:
        """Publish an epoch: ``last.pt`` (and ``best.pt``) copied from ``state``, and
        ``metrics.jsonl`` rewritten from ``history``; each file replaced atomically.

        The metrics file is rewritten whole from the checkpointed history, so an epoch redone after
        a failure is never listed twice.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        _atomic_copy(state, self.last)
        if is_best:
            _atomic_copy(state, self.best)
        lines = "".join(row.model_dump_json() + "\n" for row in history)
        tmp = self.metrics.with_name(f".{METRICS_FILE}.tmp")
        tmp.write_text(lines)
        os.replace(tmp, self.metrics)

    def summary(self) -> RunSummary:
        """What the run folder says about the run now."""
        history = self.read_metrics()
        scores = [row.val_miou for row in history if row.val_miou is not None]
        return RunSummary(
            run_dir=str(self.directory),
            best_checkpoint=str(self.best),
            last_checkpoint=str(self.last),
            epochs_done=len(history),
            best_val_miou=max(scores) if scores else None,
            final=history[-1] if history else None,
            history=history,
        )


class RunSummary(BaseModel):
    """A finished (or resumed) training run, as its run folder shows it.

    Attributes:
        run_dir: The run folder.
        best_checkpoint: Its ``best.pt``.
        last_checkpoint: Its ``last.pt``.
        epochs_done: Epochs with a metrics row.
        best_val_miou: The best validation mIoU, None without validation.
        final: The last epoch's row.
        history: Every epoch's row.
    """

    run_dir: str
    best_checkpoint: str
    last_checkpoint: str
    epochs_done: int
    best_val_miou: float | None
    final: MetricsRow | None
    history: list[MetricsRow]


def resolve_checkpoint(planned: str | Path) -> Path | None:
    """The checkpoint a training stage left where ``planned`` names it: the file itself, or, for a
    planned ``best.pt``, the ``last.pt`` beside it; None when neither exists."""
    path = Path(planned)
    if path.is_file():
        return path
    if path.name == BEST_FILE:
        return RunFiles(path.parent).checkpoint()
    return None


def _atomic_copy(source: Path, destination: Path) -> None:
    tmp = destination.with_name(f".{destination.name}.tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, destination)
