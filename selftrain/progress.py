"""Progress bars of runs in this process (the demo, ``selftrain run``)."""

from __future__ import annotations

import threading
from pathlib import Path

from tqdm import tqdm

from core.runfiles import read_metrics


class EpochProgress:
    """A progress bar of a training run's epochs, fed from its metrics.jsonl.

    The job writes one line per epoch into the run folder; a thread on the driver reads it, so the
    bar needs nothing from inside the Ray workers.

    Args:
        metrics: The run's metrics.jsonl.
        epochs: Epochs of the run.
        desc: The bar's label.
        enabled: Show the bar at all.
    """

    def __init__(self, metrics: Path, epochs: int, desc: str, enabled: bool = True) -> None:
        self.metrics = metrics
        self.bar = tqdm(total=epochs, desc=desc, unit="epoch", disable=not enabled)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._follow, daemon=True)

    def __enter__(self) -> EpochProgress:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        self.thread.join()
        self._update()
        self.bar.close()

    def _follow(self) -> None:
        while not self.stop.wait(0.5):
            self._update()

    def _update(self) -> None:
        rows = read_metrics(self.metrics)
        if len(rows) > self.bar.n:
            last = rows[-1]
            self.bar.set_postfix(
                loss=f"{last.loss:.3f}",
                crop=last.crop_size,
                img_s=f"{last.images_per_s:.0f}",
                refresh=False,
            )
            self.bar.update(len(rows) - self.bar.n)
