"""Label store at scale: files per image, write rate, and what its readers pay, at N images.

    python benchmarks/store_scale.py --n 100000
    python benchmarks/store_scale.py --n 1000000 --dir /scratch   # a disk with room (about 5 GB)

Writes N small label maps (``--size``, 64x128 by default; 19 classes) into a fresh store through
the store's real write path and the label job's writer layout: ``--writers`` processes (like the
job's actors), each writing whole shards (every ``--writers``-th one) with a
``core.store.ShardWriter``, a teacher's outputs for each image (label map, confidence, centroids).
The maps are 32 street-like scenes (bands of sky, building and road, and a few boxes of other
classes: about ten regions each), each image one of them shifted sideways, with confidences that
drop at region borders and carry noise, so that they compress like real ones, not like constants.
No model runs: this measures the store, not the teacher.

``write_s`` runs from the writers' first write to their last (``write_wall_s`` adds their start-up
as processes). Then, each on a freshly opened store, it times what the store's readers do:

- ``index_load_s``: the student's index (core.training): the done set, then the centroid table;
- ``sampler_build_s`` / ``draw_10000_s``: building core.sampling's EpochSampler on it, and
  drawing one epoch of 10,000 centroid samples;
- ``store_info_s``: ``selftrain store-info`` (core.store.store_info), what the dashboard reads;
- ``resume_scan_s``: the label driver's resume (``open_for_labeling`` with the same image list,
  which finds no new image, then ``LabelingRun.resume`` and its shards);
- ``random_label_read_ms``: ``store.label(i)`` of random done images (median of 50; the first,
  cold one apart).

Prints one JSON line.
"""

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from core.centroids import find_centroids
from core.labels import CITYSCAPES_TRAIN_IDS
from core.store import LabelStore, store_info

N_SCENES = 32
TEACHER = {"sha256": "benchmark", "model_name": "none"}
SETTINGS = {"mode": "whole", "precision": "fp32", "min_centroid_area": 32}


def scenes(size: tuple[int, int], seed: int = 0) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``N_SCENES`` (label, confidence, centroids) triples of street-like scenes: bands of sky,
    building and road, and a few boxes of other classes (about ten regions each)."""
    rng = np.random.default_rng(seed)
    height, width = size
    names = CITYSCAPES_TRAIN_IDS.names
    sky, building, road = (names.index(c) for c in ("sky", "building", "road"))
    out = []
    for _ in range(N_SCENES):
        label = np.full(size, road, dtype=np.uint8)
        horizon, street = sorted(rng.integers(height // 8, height - height // 8, 2))
        label[:horizon], label[horizon:street] = sky, building
        for _ in range(rng.integers(4, 11)):
            h, w = rng.integers(4, height // 2), rng.integers(4, width // 3)
            y, x = rng.integers(0, height - h), rng.integers(0, width - w)
            label[y : y + h, x : x + w] = rng.integers(0, CITYSCAPES_TRAIN_IDS.num_classes)
        border = np.zeros(size, dtype=bool)
        border[:, 1:] |= label[:, 1:] != label[:, :-1]
        border[1:, :] |= label[1:, :] != label[:-1, :]
        noise = rng.integers(0, 24, size)
        confidence = np.clip(250 - 90 * border - noise, 0, 255).astype(np.uint8)
        out.append((label, confidence, find_centroids(label, min_area=32)))
    return out


def image(scene_list, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image ``index``: a scene shifted sideways by ``index`` pixels."""
    label, confidence, centroids = scene_list[index % N_SCENES]
    shift = index % label.shape[1]
    return np.roll(label, shift, axis=1), np.roll(confidence, shift, axis=1), centroids


def write_shards(path: str, writer: int, writers: int, size: tuple[int, int], times) -> None:
    """One writer process: shards ``writer``, ``writer + writers``, ... of the store, whole;
    puts its (start, end) times on ``times``."""
    store = LabelStore.open(path)
    scene_list = scenes(size)
    start = time.time()
    for shard in range(writer, store.n_shards, writers):
        first, stop = store.shard_range(shard)
        with store.shard_writer(shard, run=0) as shard_writer:
            for index in range(first, stop):
                shard_writer.write(index, *image(scene_list, index))
    times.put((start, time.time()))


def write_store(path: Path, n: int, size, images_per_shard: int, writers: int) -> dict:
    paths = [f"unlabeled/img_{i:08d}.png" for i in range(n)]
    start = time.perf_counter()
    LabelStore.create(
        path, paths, None, CITYSCAPES_TRAIN_IDS, TEACHER, SETTINGS, False, images_per_shard
    )
    created = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    times = context.Queue()
    processes = [
        context.Process(target=write_shards, args=(str(path), w, writers, size, times))
        for w in range(writers)
    ]
    for process in processes:
        process.start()
    spans = [times.get() for _ in processes]
    for process in processes:
        process.join()
        if process.exitcode != 0:
            raise RuntimeError(f"a writer process failed (exit code {process.exitcode})")
    written = time.perf_counter()
    # From the first writer's first write to the last one's end (process start-up apart).
    write_s = max(end for _, end in spans) - min(begin for begin, _ in spans)
    return {
        "create_s": round(created - start, 3),
        "write_s": round(write_s, 3),
        "write_images_per_s": round(n / write_s, 1),
        "write_wall_s": round(written - created, 3),
        "paths": paths,
    }


def files_and_bytes(path: Path) -> tuple[int, int]:
    files = size = 0
    for folder, _, names in os.walk(path):
        files += len(names)
        size += sum(os.path.getsize(os.path.join(folder, name)) for name in names)
    return files, size


def time_readers(path: Path, paths: list[str], seed: int = 0) -> dict:
    """The readers' timings on freshly opened stores (see the module docstring)."""
    # Imported here: the writer processes import this module, and need neither (nor torch).
    from core.labeling import LabelingRun, open_for_labeling
    from core.sampling import EpochSampler

    out: dict = {}
    start = time.perf_counter()
    store = LabelStore.open(path, read_only=True)
    done = store.done_indices()
    centroids = store.centroids(done=done)
    out["index_load_s"] = round(time.perf_counter() - start, 3)
    out["n_centroids"] = len(centroids)
    start = time.perf_counter()
    sampler = EpochSampler(0, [done], [centroids], seed=seed)
    out["sampler_build_s"] = round(time.perf_counter() - start, 3)
    start = time.perf_counter()
    sampler.samples(epoch=0, n_real=0, n_pseudo=10_000)
    out["draw_10000_s"] = round(time.perf_counter() - start, 3)

    start = time.perf_counter()
    info = store_info(path)
    out["store_info_s"] = round(time.perf_counter() - start, 3)
    assert info["n_done"] == len(done) == len(paths)

    start = time.perf_counter()
    store = open_for_labeling(path, paths, CITYSCAPES_TRAIN_IDS, TEACHER, SETTINGS)
    run = LabelingRun.resume(store, {"benchmark": "store_scale"}, retry_failed=True)
    shards = run.shards()
    out["resume_scan_s"] = round(time.perf_counter() - start, 3)
    assert len(run.todo) == 0 and shards == []

    store = LabelStore.open(path, read_only=True)
    rng = np.random.default_rng(seed)
    times = []
    for index in rng.choice(done, size=51, replace=False):
        start = time.perf_counter()
        store.label(int(index))
        times.append(1000 * (time.perf_counter() - start))
    out["first_label_read_ms"] = round(times[0], 2)
    out["random_label_read_ms"] = round(float(np.median(times[1:])), 2)
    out["random_label_read_max_ms"] = round(max(times[1:]), 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="images")
    parser.add_argument("--size", default="64x128", help="HxW of every label map")
    parser.add_argument("--images-per-shard", type=int, default=256)
    parser.add_argument("--writers", type=int, default=2, help="writer processes (actors)")
    parser.add_argument("--dir", default=None, help="where to put the store (a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the store")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    folder = Path(tempfile.mkdtemp(prefix="store_scale_", dir=args.dir))
    path = folder / "labels.zarr"
    began = time.perf_counter()
    try:
        written = write_store(path, args.n, size, args.images_per_shard, args.writers)
        paths = written.pop("paths")
        files, size_bytes = files_and_bytes(path)
        readers = time_readers(path, paths)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    result = {
        "benchmark": "store_scale",
        "n": args.n,
        "size": list(size),
        "images_per_shard": args.images_per_shard,
        "writers": args.writers,
        "files": files,
        "files_per_image": round(files / args.n, 4),
        "store_mb": round(size_bytes / 2**20, 1),
        **written,
        **readers,
        "total_s": round(time.perf_counter() - began, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_1m": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
