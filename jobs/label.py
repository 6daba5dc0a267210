"""The pseudo-label job: a teacher labels unlabeled images into a Zarr label store (core.store).

    python jobs/label.py --config label.yaml                       # embedded local Ray
    ray job submit --working-dir . -- python jobs/label.py --config label.yaml   # on a cluster

The driver lists the images, opens (or creates) the store, and streams the indices of the images not
done yet through Ray Data to a pool of teacher actors. Each actor reads its images, labels them and
writes the results into the store itself, so only small result rows come back to the driver, which
counts them and publishes progress. Rerunning the same config labels only what is not done.
"""

import json
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import numpy as np
import ray
import torch
from tqdm import tqdm

from core.checkpoint import load_model
from core.configs import InferenceSettings, LabelJobConfig
from core.errors import DataError
from core.io import read_image
from core.labeling import DONE, FAILED, SKIPPED, LabelingRun, label_batch
from core.store import ImageStatus, LabelStore
from jobs.ray_entry import init_ray, parse_config

# How often the driver publishes progress into the store.
PROGRESS_INTERVAL_S = 1.0


class TeacherLabeler:
    """The Ray Data UDF: labels a batch of (index, path) rows and writes them into the store.

    One instance per actor; the teacher is loaded once. Returns one small row per image: index,
    outcome (done, failed, or skipped when the image was already done), reason, seconds.
    """

    def __init__(
        self,
        store_path: str,
        checkpoint: str,
        settings: dict,
        run: int,
        cpus: float = 1.0,
        gpus: float = 0.0,
        channels_last: bool = False,
    ) -> None:
        # Ray gives an actor a share of the cores; more torch threads than that only contend.
        self.threads = max(1, int(cpus))
        torch.set_num_threads(self.threads)
        self.device = "cuda" if gpus > 0 else "cpu"
        self.model, _, _ = load_model(checkpoint, self.device)
        self.store = LabelStore.open(store_path)
        self.settings = InferenceSettings.model_validate(settings)
        self.run = run
        self.channels_last = channels_last
        self.decoder = ThreadPoolExecutor(self.threads) if self.threads > 1 else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        indices = [int(i) for i in batch["index"]]
        outcomes = {i: (SKIPPED, "") for i in indices}
        # A retried batch (after an actor died) or a rerun may hold images done meanwhile.
        done = self.store.statuses(indices) == ImageStatus.DONE
        todo = [(i, str(p)) for i, p, d in zip(indices, batch["path"], done, strict=True) if not d]
        images: dict[int, np.ndarray] = {}
        for (index, _), result in zip(todo, self._decode([p for _, p in todo]), strict=True):
            if isinstance(result, DataError):
                self.store.mark_failed(index, result.problem)
                outcomes[index] = (FAILED, result.problem)
            else:
                images[index] = result
        self._label(list(images), list(images.values()))
        outcomes.update({i: (DONE, "") for i in images})
        seconds = (time.perf_counter() - start) / max(1, len(indices))
        return {
            "index": np.array(indices, dtype=np.int64),
            "outcome": np.array([outcomes[i][0] for i in indices]),
            "reason": np.array([outcomes[i][1] for i in indices]),
            "seconds": np.full(len(indices), seconds),
        }

    def _decode(self, paths: list[str]) -> list[np.ndarray | DataError]:
        if self.decoder is None:
            return [_read_or_error(path) for path in paths]
        # OpenCV releases the GIL while decoding, so threads decode in parallel.
        return list(self.decoder.map(_read_or_error, paths))

    def _label(self, indices: list[int], images: list[np.ndarray]) -> None:
        results = label_batch(
            self.model,
            images,
            self.settings,
            self.device,
            self.channels_last,
            self.store.label_space.ignore_index,
        )
        for index, result in zip(indices, results, strict=True):
            self.store.write(index, result.label, result.confidence, result.centroids, run=self.run)


def _read_or_error(path: str) -> np.ndarray | DataError:
    try:
        return read_image(path)
    except DataError as exc:
        return exc


def run(config: LabelJobConfig, progress_bar: bool = True) -> dict:
    """Label every image of the source that the store does not hold as done yet.

    Returns:
        The run's summary (core.labeling.LabelingRun.finish).
    """
    labeling = LabelingRun.start(config)
    state: Literal["finished", "failed"] = "failed"
    try:
        if len(labeling.todo):
            results = _label_dataset(config, labeling)
            with tqdm(
                total=len(labeling.todo), desc="labeling", unit="img", disable=not progress_bar
            ) as bar:
                for row in results.iter_rows():
                    labeling.count(str(row["outcome"]), PROGRESS_INTERVAL_S)
                    if row["outcome"] == FAILED:
                        tqdm.write(f"failed: image {row['index']}: {row['reason']}")
                    bar.update(1)
        state = "finished"
    finally:
        summary = labeling.finish(state)
    return summary


def _label_dataset(config: LabelJobConfig, labeling: LabelingRun) -> ray.data.Dataset:
    init_ray(config.ray_address)
    # Our own progress bar and the store's progress replace Ray Data's bars.
    ray.data.DataContext.get_current().enable_progress_bars = False
    paths = labeling.store.image_paths()
    rows = ray.data.from_items([{"index": int(i), "path": paths[i]} for i in labeling.todo])
    return rows.map_batches(
        TeacherLabeler,
        fn_constructor_kwargs={
            "store_path": str(labeling.store.path),
            "checkpoint": os.path.abspath(config.teacher_checkpoint),
            "settings": config.inference().identity(),
            "run": labeling.number,
            "cpus": config.cpus_per_actor,
            "gpus": config.gpus_per_actor,
            "channels_last": config.channels_last,
        },
        batch_size=config.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=config.num_actors),
        num_cpus=config.cpus_per_actor,
        num_gpus=config.gpus_per_actor,
    )


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(__doc__.splitlines()[0], LabelJobConfig, argv)
    result = run(config)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
