"""Public datasets the tests read when a shared copy sits beside the repository
(``../shared/datasets``); the tests that need one are skipped without it."""

from pathlib import Path

import pytest

CAMVID_ROOT = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "camvid"
needs_camvid = pytest.mark.skipif(
    not CAMVID_ROOT.is_dir(), reason=f"shared CamVid copy not found at {CAMVID_ROOT}"
)
