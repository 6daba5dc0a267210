"""The CamVid benchmark's data: the inductive splits at half resolution, and extra test splits.

The protocol (benchmarks/camvid_selftrain.py) holds one whole sequence out of everything a model
trains on, so a student's gain there is a gain on images that nobody labeled or pseudo-labeled:

- TEST: every frame of sequence ``0006R0`` (101 of CamVid train, with their labels). Not labeled,
  not in the pool: the headline column.
- LABELED: a fixed 1/8 of the other train frames (``0001TP`` and ``0016E5``: 266 -> 33), listed in
  ``benchmarks/camvid/labeled_1of8_inductive.txt``.
- POOL (unlabeled, for the pseudo labels): the other 233 non-test train frames plus all 101 val
  frames (their labels are read only to measure the pseudo labels' quality).
- VAL: CamVid val, still evaluated, but its images are in the pool, so its column is transductive.
- Extra tests (``--extra-test NAME=FORMAT:ROOT:SPLIT``): labeled splits from outside the shared
  data (e.g. CamVid's own ``test/`` + ``testannot/``), converted to the same resolution.

Everything is written once into ``<workdir>/data`` (folders are built aside and renamed into place,
so concurrent or interrupted runs never see half a folder):

- ``camvid_180x240/``: CamVid train and val at 180x240 (images bilinear, which at exactly half
  averages 2x2 blocks; labels nearest), SegNet layout, PNG.
- ``inductive_180x240/test`` + ``testannot``: relative symlinks to the test sequence's frames.
- ``pool_inductive_180x240/{train,val}``: relative symlinks to the pool's images (a ``folder``
  source).
- ``extra_<NAME>_180x240/test`` + ``testannot``: an extra test split, converted; ``source.json``
  records where it came from.

Run as a script to rewrite (or, with ``--check``, to verify) the labeled list:
``python benchmarks/camvid_data.py [--camvid CAMVID_ROOT] [--check]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.configs import DataSource
from core.datasets import SegmentationDataset, camvid, open_source, subset_fraction
from core.io import write_image, write_label
from core.labels import CAMVID
from core.transforms import resize_pair

REPO = Path(__file__).resolve().parents[1]
LABELED_LIST = REPO / "benchmarks" / "camvid" / "labeled_1of8_inductive.txt"
DEFAULT_CAMVID = REPO.parent / "shared" / "datasets" / "camvid"
HALF_SIZE = (180, 240)
DATA_NAME = "camvid_180x240"
SPLITS_NAME = "inductive_180x240"
POOL_NAME = "pool_inductive_180x240"
TEST_SEQUENCE = "0006R0"
LABELED_FRACTION = 1 / 8
LABELED_SEED = 0
EXTRA_FORMATS = ("camvid", "folder")
RESERVED_SPLITS = ("test", "val")


# --- the labeled list --------------------------------------------------------------------------


def is_test_frame(stem: str) -> bool:
    return stem.startswith(f"{TEST_SEQUENCE}_")


def draw_labeled_list(camvid_root: Path) -> list[str]:
    """The labeled stems: ``subset_fraction`` (1/8, seed 0) of CamVid train without the test
    sequence, in path order, sorted."""
    train = camvid(camvid_root, "train")
    kept = [i for i, p in enumerate(train.image_paths()) if not is_test_frame(Path(p).stem)]
    chosen = subset_fraction(train.subset(kept), LABELED_FRACTION, LABELED_SEED)
    return sorted(Path(p).stem for p in chosen.image_paths())


def labeled_list_text(stems: list[str]) -> str:
    header = [
        f"# CamVid train, the labeled 1/8 of the inductive protocol ({len(stems)} of the 266",
        f"# frames outside the held-out test sequence {TEST_SEQUENCE}) for",
        "# benchmarks/camvid_selftrain.py. Drawn once by `python benchmarks/camvid_data.py`:",
        "# core.datasets.subset_fraction(camvid(root, 'train') without the 0006R0 frames, 1/8,",
        "# seed=0), stems sorted. This file, not the seed, defines the split.",
        "# One image stem a line; `python benchmarks/camvid_data.py --check` redraws and compares.",
    ]
    return "\n".join([*header, *stems]) + "\n"


def labeled_stems() -> set[str]:
    lines = LABELED_LIST.read_text().splitlines()
    return {line.split()[0] for line in lines if line.strip() and not line.startswith("#")}


# --- the splits --------------------------------------------------------------------------------


def prepare_data(camvid_root: Path, data_dir: Path) -> dict:
    """Write the half-resolution copy, the test split and the pool (once); check that labeled,
    pool and test are disjoint; describe them."""
    half = data_dir / DATA_NAME
    splits = data_dir / SPLITS_NAME
    pool = data_dir / POOL_NAME
    build_once(half, lambda tmp: write_half_resolution(camvid_root, tmp))
    train_stems = [Path(p).stem for p in camvid(half, "train").image_paths()]
    val_stems = [Path(p).stem for p in camvid(half, "val").image_paths()]
    labeled = labeled_stems()
    missing = sorted(labeled - set(train_stems))
    if missing or any(is_test_frame(s) for s in labeled):
        raise SystemExit(f"{LABELED_LIST}: names frames not in non-test train: {missing[:5]}")
    test = [s for s in train_stems if is_test_frame(s)]
    pool_train = [s for s in train_stems if not is_test_frame(s) and s not in labeled]
    build_once(splits, lambda tmp: link_split(half, "train", test, tmp, "test"))
    build_once(pool, lambda tmp: write_pool(half, tmp, {"train": pool_train, "val": val_stems}))
    pool_stems = {p.stem for p in pool.glob("*/*")}
    test_stems = {Path(p).stem for p in camvid(splits, "test").image_paths()}
    if pool_stems & (labeled | test_stems) or labeled & test_stems:
        raise SystemExit(f"{data_dir}: labeled, pool and test overlap; remove the folder")
    return {
        "camvid": str(camvid_root),
        "half_resolution": str(half),
        "size_hw": list(HALF_SIZE),
        "labeled_list": str(LABELED_LIST.relative_to(REPO)),
        "labeled_images": len(labeled),
        "pool": str(pool),
        "pool_images": {split: len(list((pool / split).iterdir())) for split in ("train", "val")},
        "test_sequence": TEST_SEQUENCE,
        "test_images": len(test_stems),
        "val_images": len(val_stems),
        "eval_splits": {
            "test": {"root": str(splits), "split": "test", "images": len(test_stems)},
            "val": {"root": str(half), "split": "val", "images": len(val_stems)},
        },
    }


def build_once(folder: Path, build: Callable[[Path], None]) -> None:
    """Build ``folder`` in a temporary sibling and rename it into place, unless it exists.

    The rename is atomic, so two benchmark processes started together (e.g. one per seed) never
    see a half-written folder, and an interrupted build leaves only a temporary folder behind.
    """
    if folder.is_dir():
        return
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    build(tmp)
    try:
        tmp.rename(folder)
    except OSError:  # another process finished first
        shutil.rmtree(tmp)
        if not folder.is_dir():
            raise


def write_half_resolution(source_root: Path, dest_root: Path) -> None:
    """CamVid train and val at half resolution as PNG (images, and train-id labels with 255 for
    void, which the camvid loader reads back unchanged)."""
    for split in ("train", "val"):
        write_converted(camvid(source_root, split), dest_root, split)


def write_converted(dataset: SegmentationDataset, dest_root: Path, split: str) -> list[list[int]]:
    """``dataset`` at 180x240 in the SegNet layout under ``dest_root``; returns the sizes (H, W)
    the images had."""
    sizes = []
    for index in range(len(dataset)):
        image, label, path = dataset[index]
        if label is None:
            raise SystemExit(f"{path}: an evaluation split needs a label for every image")
        sizes.append(list(image.shape[:2]))
        image, label = resize_pair(image, label, HALF_SIZE)
        stem = Path(path).stem
        write_image(dest_root / split / f"{stem}.png", image)
        write_label(dest_root / f"{split}annot" / f"{stem}.png", label)
    return sizes


def link_split(half_root: Path, split: str, stems: list[str], dest_root: Path, name: str) -> None:
    """``dest_root/<name>`` + ``<name>annot``: relative symlinks to ``stems`` of ``half_root``'s
    ``split`` (``dest_root`` is a sibling of ``half_root``, wherever it is renamed to)."""
    for sub, suffix in ((name, ""), (f"{name}annot", "annot")):
        (dest_root / sub).mkdir(parents=True)
        for stem in stems:
            target = Path("..", "..", half_root.name, f"{split}{suffix}", f"{stem}.png")
            (dest_root / sub / f"{stem}.png").symlink_to(target)


def write_pool(half_root: Path, pool_root: Path, stems: dict[str, list[str]]) -> None:
    """Relative symlinks to the pool's images (a ``folder`` source), one folder per split."""
    for split, names in stems.items():
        folder = pool_root / split
        folder.mkdir(parents=True)
        for stem in names:
            target = Path("..", "..", half_root.name, split, f"{stem}.png")
            (folder / f"{stem}.png").symlink_to(target)


# --- extra test splits -------------------------------------------------------------------------


@dataclass(frozen=True)
class ExtraTest:
    """``NAME=FORMAT:ROOT:SPLIT``: a labeled split every model is also evaluated on.

    ``FORMAT`` is ``camvid`` (SegNet layout: ``ROOT/SPLIT`` + ``ROOT/SPLITannot``, values 0..10,
    11 void) or ``folder`` (``ROOT/images`` + ``ROOT/labels`` holding CamVid train ids, 255
    ignore; SPLIT is then only a name).
    """

    name: str
    format: str
    root: str
    split: str

    @classmethod
    def parse(cls, text: str) -> ExtraTest:
        name, sep, rest = text.partition("=")
        fmt, sep2, rest = rest.partition(":")
        root, sep3, split = rest.rpartition(":")
        if not (sep and sep2 and sep3 and name and root and split):
            raise ValueError(f"{text!r}: expected NAME=FORMAT:ROOT:SPLIT")
        if not re.fullmatch(r"[A-Za-z0-9_]+", name) or name in RESERVED_SPLITS:
            raise ValueError(f"{text!r}: NAME must be letters, digits, _ and not test or val")
        if fmt not in EXTRA_FORMATS:
            raise ValueError(f"{text!r}: FORMAT must be one of {', '.join(EXTRA_FORMATS)}")
        return cls(name, fmt, str(Path(root).expanduser().resolve()), split)

    def source(self) -> DataSource:
        if self.format == "folder":
            return DataSource(format="paired", root=self.root, classes=list(CAMVID.names))
        return DataSource(format="camvid", root=self.root, split=self.split)


def prepare_extra_test(extra: ExtraTest, data_dir: Path) -> dict:
    """Convert ``extra`` to 180x240 under ``data_dir/extra_<NAME>_180x240`` (once) and describe
    it. A folder of that name made from another source is refused."""
    folder = data_dir / f"extra_{extra.name}_180x240"
    wanted = {"format": extra.format, "root": extra.root, "split": extra.split}

    def build(tmp: Path) -> None:
        dataset = open_source(extra.source())
        if dataset.label_space is None or list(dataset.label_space.names) != list(CAMVID.names):
            raise SystemExit(f"{extra.root}: not CamVid's 11 classes")
        sizes = write_converted(dataset, tmp, "test")
        original = sorted({tuple(s) for s in sizes})
        (tmp / "source.json").write_text(
            json.dumps({**wanted, "images": len(sizes), "source_sizes_hw": original}) + "\n"
        )

    build_once(folder, build)
    recorded = json.loads((folder / "source.json").read_text())
    if {k: recorded.get(k) for k in wanted} != wanted:
        raise SystemExit(
            f"{folder} was converted from {recorded}, not {wanted}; use another NAME or remove it"
        )
    if any(tuple(s) != (360, 480) for s in recorded["source_sizes_hw"]):
        print(
            f"warning: {extra.name}: images of {recorded['source_sizes_hw']} resized to "
            f"{HALF_SIZE}, not exactly half of CamVid's 360x480",
            file=sys.stderr,
        )
    return {
        **recorded,
        "root": str(folder),
        "split": "test",
        "source_root": extra.root,
        "source_split": extra.split,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write or check the inductive labeled list.")
    parser.add_argument("--camvid", type=Path, default=DEFAULT_CAMVID)
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    text = labeled_list_text(draw_labeled_list(args.camvid.expanduser().resolve()))
    if args.check:
        same = LABELED_LIST.is_file() and LABELED_LIST.read_text() == text
        print(f"{LABELED_LIST.relative_to(REPO)}: {'as drawn' if same else 'DIFFERS'}")
        return 0 if same else 1
    LABELED_LIST.write_text(text)
    print(f"wrote {LABELED_LIST.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
