"""`write_synthetic_dataset`: scenes written as files in the Cityscapes layout."""

from __future__ import annotations

import zlib
from pathlib import Path

import cv2
import numpy as np

from core.labels import CITYSCAPES
from core.synth.render import DOMAINS, check_domain, check_size, generate_scene


def write_synthetic_dataset(
    out: str | Path,
    n: int,
    domain: str = "source",
    size: tuple[int, int] = (256, 512),
    seed: int = 0,
    split: str = "train",
) -> list[Path]:
    """Write `n` scenes in the Cityscapes layout.

    Files: ``out/leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`` and, under
    ``out/gtFine/<split>/<city>/``, ``<stem>_gtFine_labelIds.png`` (regular ids) and
    ``<stem>_gtFine_labelTrainIds.png`` (train ids, 255 = ignore). The city is ``synth_<domain>``,
    the stem ``<city>_<i:06d>_000019``. Scene i depends only on (seed, domain, split, i): 16 scenes
    begin with the 8 of a run with n=8, and the train and val splits of one seed differ.

    Args:
        out: Dataset root.
        n: Number of scenes, at least 1.
        domain: ``"source"`` or ``"target"``.
        size: (height, width) in pixels.
        seed: Non-negative seed.
        split: Split folder name, e.g. ``"train"`` or ``"val"``.

    Returns:
        The image paths, in scene order.

    Raises:
        ValueError: A bad n, domain, size or seed.
        OSError: A file cannot be written.
    """
    if n < 1:
        raise ValueError(f"number of scenes must be at least 1, got {n}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    check_domain(domain)
    check_size(size)
    city = f"synth_{domain}"
    image_dir = Path(out) / "leftImg8bit" / split / city
    label_dir = Path(out) / "gtFine" / split / city
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    # crc32, unlike hash(), is the same in every process, so the files are reproducible.
    stream = [seed, DOMAINS.index(domain), zlib.crc32(split.encode())]
    paths = []
    for i in range(n):
        rgb, label = generate_scene(np.random.default_rng([*stream, i]), size, domain)
        stem = f"{city}_{i:06d}_000019"
        image_path = image_dir / f"{stem}_leftImg8bit.png"
        _write_png(image_path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        _write_png(label_dir / f"{stem}_gtFine_labelIds.png", label)
        _write_png(label_dir / f"{stem}_gtFine_labelTrainIds.png", CITYSCAPES.to_train_ids(label))
        paths.append(image_path)
    return paths


def _write_png(path: Path, image: np.ndarray) -> None:
    """Write a PNG, raising OSError where OpenCV only returns False."""
    if not cv2.imwrite(str(path), image):
        raise OSError(f"could not write {path}")
