"""An online student's unlabeled pool at scale: what 10^6 images cost it.

    python benchmarks/online_pool_scale.py --n 1000000

An online student that reads an unlabeled source keeps its file list in a ``PathTable`` (one byte
buffer and an offset array, core.online_data) instead of a Python list of strings, and draws each
epoch's unlabeled samples from an index array (core.sampling.EpochSampler). This measures, for N
Cityscapes-like paths (no files are written: the listing itself is the source's, measured by the
label job's benchmarks):

- ``list_bytes_per_image`` / ``table_bytes_per_image``: memory of the paths as a list of str and as
  a PathTable (tracemalloc: what Python allocates for them);
- ``table_pickle_mb``: what a loader worker started by spawn receives for the pool;
- ``table_build_s``: packing the list into the table;
- ``sampler_build_s`` / ``draw_epoch_s``: an EpochSampler over the N images, and one epoch's list
  of ``--epoch-samples`` unlabeled samples (whole images, no centroids);
- ``random_path_us``: one path read back from the table (median of 10,000).

A label store as the pool reads its own ``paths`` column per sample and keeps only its done index
(benchmarks/store_scale.py measures that index at 10^6 images). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pickle
import platform
import time
import tracemalloc

import numpy as np

from core.online_data import PathTable
from core.sampling import EpochSampler


def paths(n: int) -> list[str]:
    """N paths shaped like Cityscapes' train_extra images."""
    cities = [f"city{c:02d}" for c in range(50)]
    return [
        f"/data/cityscapes/leftImg8bit/train_extra/{cities[i % 50]}/"
        f"{cities[i % 50]}_{i // 50:06d}_{i % 1000:06d}_leftImg8bit.png"
        for i in range(n)
    ]


def allocated(build) -> tuple[object, int]:
    """``build()`` and the bytes Python allocated for what it returned."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    value = build()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return value, after - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--epoch-samples", type=int, default=100_000)
    args = parser.parse_args()
    names, list_bytes = allocated(lambda: paths(args.n))
    start = time.perf_counter()
    table, table_bytes = allocated(functools.partial(PathTable, names))
    table_build_s = time.perf_counter() - start
    assert table[args.n - 1] == names[-1]
    pickled = len(pickle.dumps(table))
    rng = np.random.default_rng(0)
    picks = rng.integers(0, args.n, 10_000)
    timings = []
    for i in picks:
        t = time.perf_counter()
        table[int(i)]
        timings.append(time.perf_counter() - t)
    del names
    start = time.perf_counter()
    sampler = EpochSampler(0, [np.arange(args.n, dtype=np.int64)], None, seed=0)
    sampler_build_s = time.perf_counter() - start
    start = time.perf_counter()
    samples = sampler.samples(0, 0, args.epoch_samples)
    draw_epoch_s = time.perf_counter() - start
    assert len(samples) == args.epoch_samples
    print(
        json.dumps(
            {
                "n": args.n,
                "list_bytes_per_image": round(list_bytes / args.n, 1),
                "table_bytes_per_image": round(table_bytes / args.n, 1),
                "table_pickle_mb": round(pickled / 2**20, 1),
                "table_build_s": round(table_build_s, 2),
                "random_path_us": round(1e6 * float(np.median(timings)), 2),
                "sampler_build_s": round(sampler_build_s, 3),
                "epoch_samples": args.epoch_samples,
                "draw_epoch_s": round(draw_epoch_s, 3),
                "cpu": platform.processor() or platform.machine(),
                "loadavg": [round(x, 2) for x in os.getloadavg()],
            }
        )
    )


if __name__ == "__main__":
    main()
