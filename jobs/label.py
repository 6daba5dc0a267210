"""The pseudo-label job: a teacher labels unlabeled images into a Zarr label store (core.store).

    python jobs/label.py --config label.yaml                       # embedded local Ray
    ray job submit --working-dir . -- python jobs/label.py --config label.yaml   # on a cluster

The driver lists the images, opens (or creates) the store, and streams one row per shard of the
store (the shard and its images not done yet) through Ray Data to a pool of teacher actors. Each
actor labels whole shards and writes them into the store itself, as each shard's only writer
(core.labeling.label_shard), so only small result rows come back to the driver, which counts them
and publishes progress. Rerunning the same config labels only what is not done.
"""

import json
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Literal

import numpy as np
import ray
import torch
from tqdm import tqdm

from core.checkpoint import load_model
from core.configs import InferenceSettings, LabelJobConfig
from core.errors import DataError
from core.labeling import FAILED, LabelingRun, label_batch, label_shard, read_image_or_error
from core.store import LabelStore
from jobs.ray_entry import init_ray, parse_config

# How often the driver publishes progress into the store.
PROGRESS_INTERVAL_S = 1.0


class TeacherLabeler:
    """The Ray Data UDF: labels shards, one row (shard, indices) each, into the store.

    One instance per actor; the teacher is loaded once. Returns one small row per image: index,
    outcome (done, failed, or skipped when the image was already done), reason, seconds.
    """

    def __init__(
        self,
        store_path: str,
        checkpoint: str,
        settings: dict,
        run: int,
        batch_size: int = 4,
        cpus: float = 1.0,
        gpus: float = 0.0,
        channels_last: bool = False,
    ) -> None:
        # Ray gives an actor a share of the cores; more torch threads than that only contend.
        self.threads = max(1, int(cpus))
        torch.set_num_threads(self.threads)
        device = "cuda" if gpus > 0 else "cpu"
        model, _, _ = load_model(checkpoint, device)
        self.store = LabelStore.open(store_path)
        self.run = run
        self.batch_size = batch_size
        self.label_images = partial(
            label_batch,
            model,
            settings=InferenceSettings.model_validate(settings),
            device=device,
            channels_last=channels_last,
            ignore_index=self.store.label_space.ignore_index,
        )
        self.decoder = ThreadPoolExecutor(self.threads) if self.threads > 1 else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows, seconds = [], []
        for shard, indices in zip(batch["shard"], batch["indices"], strict=True):
            start = time.perf_counter()
            results = label_shard(
                self.store,
                int(shard),
                np.asarray(indices, dtype=np.int64),
                self.label_images,
                self.run,
                self.batch_size,
                self._decode,
            )
            rows += results
            seconds += [(time.perf_counter() - start) / max(1, len(results))] * len(results)
        return {
            "index": np.array([index for index, _, _ in rows], dtype=np.int64),
            "outcome": np.array([outcome for _, outcome, _ in rows]),
            "reason": np.array([reason for _, _, reason in rows]),
            "seconds": np.array(seconds, dtype=np.float64),
        }

    def _decode(self, paths: list[str]) -> list[np.ndarray | DataError]:
        if self.decoder is None:
            return [read_image_or_error(path) for path in paths]
        # OpenCV releases the GIL while decoding, so threads decode in parallel.
        return list(self.decoder.map(read_image_or_error, paths))


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
    # One row per shard: an actor gets whole shards, so no two actors write the same files. One
    # block per shard too, so the shards spread over the actors.
    shards = [{"shard": shard, "indices": part.tolist()} for shard, part in labeling.shards()]
    rows = ray.data.from_items(shards, override_num_blocks=len(shards))
    return rows.map_batches(
        TeacherLabeler,
        fn_constructor_kwargs={
            "store_path": str(labeling.store.path),
            "checkpoint": os.path.abspath(config.teacher_checkpoint),
            "settings": config.inference().identity(),
            "run": labeling.number,
            "batch_size": config.batch_size,
            "cpus": config.cpus_per_actor,
            "gpus": config.gpus_per_actor,
            "channels_last": config.channels_last,
        },
        batch_size=1,
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
