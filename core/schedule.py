"""Crop-size schedules (paper Sec. 3.3): which crop size, and so which batch size, each epoch uses.

Kinds, after ``warmup_epochs`` epochs at the largest crop:

- ``constant``: the largest crop every epoch.
- ``coarse2fine`` / ``fine2coarse``: sizes small -> large / large -> small, each held for one
  block of epochs; the remaining epochs split into ``len(sizes)`` contiguous blocks whose lengths
  differ by at most one (the first ``remaining % len(sizes)`` blocks are one epoch longer).
- ``coarse2fine+`` / ``fine2coarse+``: the size changes every epoch, cycling small -> large /
  large -> small (400, 480, ..., 800, 400, ...).

The batch size grows as the crop area shrinks, so each step sees about the same number of pixels:
``batch = max(1, round(base_batch_size * (max_crop / crop) ** 2))`` (Python's ``round``: half
to even, so 12.5 -> 12).
"""

from __future__ import annotations

from collections.abc import Sequence

from core.configs import ScheduleConfig, ScheduleKind
from core.errors import ConfigError

KINDS: tuple[str, ...] = ("constant", "coarse2fine", "fine2coarse", "coarse2fine+", "fine2coarse+")

# Crop sizes in configs are meant for Cityscapes-sized images (1024 x 2048); smaller images get
# proportionally smaller crops.
REFERENCE_SHORT_SIDE = 1024


def scale_crop_sizes(
    sizes: Sequence[int], image_hw: tuple[int, int], reference: int = REFERENCE_SHORT_SIDE
) -> list[int]:
    """Scale crop sizes down for images whose shorter side is below ``reference``.

    Each size is multiplied by ``min(1, min(image_hw) / reference)``, rounded to a multiple of 8
    and kept at least 16. Order is kept; sizes that become equal stay duplicated (``CropSchedule``
    merges them).
    """
    if min(image_hw) <= 0:
        raise ValueError(f"image size must be positive, got {image_hw}")
    factor = min(1.0, min(image_hw) / reference)
    return [max(16, 8 * round(size * factor / 8)) for size in sizes]


class CropSchedule:
    """The crop and batch size of every epoch, as a pure function of the epoch index."""

    def __init__(
        self,
        kind: ScheduleKind,
        crop_sizes: Sequence[int],
        epochs: int,
        warmup_epochs: int = 0,
        base_batch_size: int = 8,
        batch_growth: float = 2.0,
    ) -> None:
        if kind not in KINDS:
            raise ConfigError(f"unknown crop schedule {kind!r}; known: {', '.join(KINDS)}")
        if not crop_sizes or any(s <= 0 for s in crop_sizes):
            raise ConfigError(
                f"crop sizes must be a non-empty list of positive sizes: {crop_sizes}"
            )
        if epochs <= 0:
            raise ConfigError(f"epochs must be positive, got {epochs}")
        if not 0 <= warmup_epochs <= epochs:
            raise ConfigError(f"warmup_epochs must be in [0, epochs={epochs}], got {warmup_epochs}")
        if base_batch_size <= 0:
            raise ConfigError(f"base_batch_size must be positive, got {base_batch_size}")
        if not 0 <= batch_growth <= 2:
            raise ConfigError(f"batch_growth must be in [0, 2], got {batch_growth}")
        self.kind = kind
        self.crop_sizes = sorted(set(crop_sizes))
        self.epochs = epochs
        self.warmup_epochs = warmup_epochs
        self.base_batch_size = base_batch_size
        self.batch_growth = batch_growth
        self.max_crop = self.crop_sizes[-1]

    def crop_size_at(self, epoch: int) -> int:
        """Crop size (square side) for ``epoch`` (0-based).

        Raises:
            ValueError: If ``epoch`` is not in ``[0, epochs)``.
        """
        if not 0 <= epoch < self.epochs:
            raise ValueError(f"epoch {epoch} is outside the schedule's {self.epochs} epochs")
        if self.kind == "constant" or epoch < self.warmup_epochs:
            return self.max_crop
        step = epoch - self.warmup_epochs
        ascending = self.crop_sizes
        order = ascending if self.kind.startswith("coarse2fine") else ascending[::-1]
        if self.kind.endswith("+"):
            return order[step % len(order)]
        return order[self._block_of(step, self.epochs - self.warmup_epochs, len(order))]

    @staticmethod
    def _block_of(step: int, n_steps: int, n_blocks: int) -> int:
        # Blocks of length base + 1 first, then blocks of length base.
        base, extra = divmod(n_steps, n_blocks)
        long_span = extra * (base + 1)
        if step < long_span:
            return step // (base + 1)
        return extra + (step - long_span) // base

    def batch_size_at(self, epoch: int) -> int:
        """Batch size for ``epoch``: ``base_batch_size`` at the largest crop, times
        ``(largest crop / crop) ** batch_growth`` at a smaller one (2: the same pixels per step)."""
        crop = self.crop_size_at(epoch)
        return max(1, round(self.base_batch_size * (self.max_crop / crop) ** self.batch_growth))

    def at(self, epoch: int) -> tuple[int, int]:
        """``(crop size, batch size)`` for ``epoch``."""
        return self.crop_size_at(epoch), self.batch_size_at(epoch)

    def sizes(self) -> list[int]:
        """Crop size of every epoch, in order."""
        return [self.crop_size_at(e) for e in range(self.epochs)]

    def __repr__(self) -> str:
        return (
            f"CropSchedule({self.kind!r}, {self.crop_sizes}, epochs={self.epochs}, "
            f"warmup_epochs={self.warmup_epochs}, base_batch_size={self.base_batch_size}, "
            f"batch_growth={self.batch_growth})"
        )


def from_config(cfg: ScheduleConfig, epochs: int) -> CropSchedule:
    """The schedule a ``ScheduleConfig`` describes, over ``epochs`` epochs."""
    return CropSchedule(
        cfg.kind, cfg.crop_sizes, epochs, cfg.warmup_epochs, cfg.base_batch_size, cfg.batch_growth
    )
