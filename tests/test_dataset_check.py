"""``selftrain datasets check`` on a tiny CamVid-layout dataset with one file of each common
mistake: every problem is found once, with the file named, and the class shares are counted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from core.configs import DataSource
from core.dataset_check import check_dataset
from core.io import write_image, write_label

REPO = Path(__file__).resolve().parents[1]


def _camvid(root: Path) -> None:
    """CamVid's SegNet layout: train/*.png with trainannot/*.png (ids 0..10, 11 void)."""
    rgb = np.zeros((4, 6, 3), np.uint8)
    good = np.zeros((4, 6), np.uint8)
    good[:, 3:] = 1  # half sky (0), half building (1)
    write_image(root / "train/a_good.png", rgb)
    write_label(root / "trainannot/a_good.png", good)
    write_image(root / "train/b_void.png", rgb)
    write_label(root / "trainannot/b_void.png", np.full((4, 6), 11, np.uint8))  # all void
    write_image(root / "train/c_outside.png", rgb)
    outside = good.copy()
    outside[0, :2] = 40  # two pixels of an id CamVid does not have
    write_label(root / "trainannot/c_outside.png", outside)
    write_image(root / "train/d_palette.png", rgb)
    palette = Image.fromarray(good, mode="P")
    palette.putpalette([128, 128, 128, 128, 0, 0])
    palette.save(root / "trainannot/d_palette.png")
    write_image(root / "train/e_color.png", rgb)
    Image.fromarray(np.stack([good * 200, good, good], axis=-1)).save(
        root / "trainannot/e_color.png"
    )
    write_image(root / "train/f_small.png", np.zeros((8, 6, 3), np.uint8))
    write_label(root / "trainannot/f_small.png", good)  # 4x6 label for an 8x6 image
    write_image(root / "train/g_wide.png", rgb)
    Image.fromarray(good.astype(np.uint16)).save(root / "trainannot/g_wide.png")  # 16-bit ids
    write_image(root / "train/h_missing.png", rgb)
    write_label(root / "trainannot/z_orphan.png", good)


def test_every_problem_is_found_with_its_file(tmp_path):
    _camvid(tmp_path)
    report = check_dataset(DataSource(format="camvid", root=str(tmp_path), split="train"))
    problems = report["problems"]
    assert {kind: found["count"] for kind, found in problems.items()} == {
        "bit_depth": 1,
        "color": 1,
        "ids_outside_space": 1,
        "missing_label": 1,
        "orphan_label": 1,
        "palette": 1,
        "size_mismatch": 1,
    }
    assert not report["ok"] and (report["images"], report["labeled"]) == (8, 8)
    assert report["ids_outside_space"] == {"40": 2}
    assert "h_missing.png" in problems["missing_label"]["examples"][0]
    assert "z_orphan.png" in problems["orphan_label"]["examples"][0]
    assert "4x6, its image 8x6" in problems["size_mismatch"]["examples"][0]
    # Pixels of classes: a_good 12 sky + 12 building, c_outside 10 sky + 12 building, g_wide as
    # a_good (its depth is reported, its ids are fine): 34 sky, 36 building of 70.
    shares = report["class_pixel_share"]
    assert shares["sky"] == 34 / 70 and shares["building"] == 36 / 70
    assert shares["car"] == 0.0


def test_the_command_exits_1_on_problems_and_0_on_a_clean_dataset(tmp_path):
    _camvid(tmp_path / "bad")
    command = [sys.executable, "-m", "selftrain.cli", "datasets", "check", "--format", "camvid"]
    bad = subprocess.run(
        [*command, "--root", str(tmp_path / "bad"), "--json"], capture_output=True, text=True
    )
    assert bad.returncode == 1 and json.loads(bad.stdout)["problems"]["palette"]["count"] == 1
    clean = tmp_path / "clean"
    write_image(clean / "val/a.png", np.zeros((2, 2, 3), np.uint8))
    write_label(clean / "valannot/a.png", np.zeros((2, 2), np.uint8))
    ok = subprocess.run(
        [*command, "--root", str(clean), "--split", "val"], capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.strip().endswith("ok") and "sky 100.0 %" in ok.stdout
