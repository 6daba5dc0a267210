"""Label spaces: class names, colors, the ignore index and the stored id -> train id mapping.

A label space answers one question for every loader: given the integer values stored in a label
file, which training class (0..num_classes-1) or ignore (255) does each pixel belong to.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

IGNORE_INDEX = 255

Color = tuple[int, int, int]


@dataclass(frozen=True)
class LabelSpace:
    """A set of training classes.

    Attributes:
        name: Short identifier, e.g. ``"cityscapes"``.
        names: Class names, index = train id.
        colors: RGB color of each class for pictures.
        id_to_train: Stored id -> train id. Stored ids not listed map to ``IGNORE_INDEX``.
            ``None`` means the stored values already are train ids (values >= num_classes
            other than ``IGNORE_INDEX`` are invalid then).
        ignore_index: The value that marks pixels without a class.
    """

    name: str
    names: tuple[str, ...]
    colors: tuple[Color, ...]
    id_to_train: Mapping[int, int] | None = None
    ignore_index: int = IGNORE_INDEX
    _lut: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.names) != len(self.colors):
            raise ValueError(
                f"label space {self.name!r}: {len(self.names)} names but {len(self.colors)} colors"
            )
        if not 0 < len(self.names) < self.ignore_index:
            raise ValueError(f"label space {self.name!r}: {len(self.names)} classes is not valid")
        if self.id_to_train is not None:
            bad = {k: v for k, v in self.id_to_train.items() if not 0 <= k <= 255}
            bad.update(
                {
                    k: v
                    for k, v in self.id_to_train.items()
                    if v != self.ignore_index and not 0 <= v < len(self.names)
                }
            )
            if bad:
                raise ValueError(f"label space {self.name!r}: invalid id mapping entries {bad}")
        object.__setattr__(self, "_lut", self._build_lut())

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def _build_lut(self) -> np.ndarray | None:
        if self.id_to_train is None:
            return None
        lut = np.full(256, self.ignore_index, dtype=np.uint8)
        for stored, train in self.id_to_train.items():
            lut[stored] = train
        return lut

    def to_train_ids(self, stored: np.ndarray) -> np.ndarray:
        """Map stored label values to train ids (uint8, ignore = ``ignore_index``)."""
        stored = np.asarray(stored)
        if self._lut is None:
            return stored.astype(np.uint8, copy=False)
        return self._lut[stored.astype(np.uint8, copy=False)]

    def invalid_values(self, train_ids: np.ndarray) -> list[int]:
        """Values in a train-id map that are neither a class nor ignore (sorted)."""
        values = np.unique(train_ids)
        return [int(v) for v in values if v != self.ignore_index and v >= self.num_classes]

    def palette(self) -> np.ndarray:
        """A (256, 3) uint8 RGB lookup table: class colors, black elsewhere (ignore included)."""
        table = np.zeros((256, 3), dtype=np.uint8)
        table[: self.num_classes] = np.asarray(self.colors, dtype=np.uint8)
        return table

    def colorize(self, train_ids: np.ndarray) -> np.ndarray:
        """RGB picture (H, W, 3) uint8 of a train-id map."""
        return self.palette()[np.asarray(train_ids, dtype=np.uint8)]

    def to_dict(self) -> dict:
        """A JSON-able description, stored in checkpoints and label stores."""
        return {
            "name": self.name,
            "names": list(self.names),
            "colors": [list(c) for c in self.colors],
            "id_to_train": None
            if self.id_to_train is None
            else {str(k): v for k, v in self.id_to_train.items()},
            "ignore_index": self.ignore_index,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> LabelSpace:
        mapping = data.get("id_to_train")
        return cls(
            name=str(data["name"]),
            names=tuple(data["names"]),
            colors=tuple(tuple(int(v) for v in c) for c in data["colors"]),
            id_to_train=None if mapping is None else {int(k): int(v) for k, v in mapping.items()},
            ignore_index=int(data.get("ignore_index", IGNORE_INDEX)),
        )


def declare_label_space(
    name: str,
    names: Sequence[str],
    colors: Sequence[Sequence[int]] | None = None,
    id_to_train: Mapping[int, int] | None = None,
) -> LabelSpace:
    """A user's own label space. Colors default to a fixed, distinct palette."""
    if colors is None:
        colors = _default_colors(len(names))
    return LabelSpace(
        name=name,
        names=tuple(names),
        colors=tuple(tuple(int(v) for v in c) for c in colors),  # type: ignore[misc]
        id_to_train=None if id_to_train is None else dict(id_to_train),
    )


def _default_colors(n: int) -> list[Color]:
    # Golden-ratio hue steps give well-separated colors for any n, deterministically.
    import colorsys

    colors = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 0.95)
        colors.append((int(r * 255), int(g * 255), int(b * 255)))
    return colors


# Cityscapes: regular label id -> train id, as in the official label table
# (cityscapesscripts.helpers.labels); tests/test_labels.py checks it against that package.
# Ids not listed (0-6, 9, 10, 14-16, 18, 29, 30 and license plate) are ignored.
_CITYSCAPES_CLASSES: tuple[tuple[int, str, Color], ...] = (
    (7, "road", (128, 64, 128)),
    (8, "sidewalk", (244, 35, 232)),
    (11, "building", (70, 70, 70)),
    (12, "wall", (102, 102, 156)),
    (13, "fence", (190, 153, 153)),
    (17, "pole", (153, 153, 153)),
    (19, "traffic light", (250, 170, 30)),
    (20, "traffic sign", (220, 220, 0)),
    (21, "vegetation", (107, 142, 35)),
    (22, "terrain", (152, 251, 152)),
    (23, "sky", (70, 130, 180)),
    (24, "person", (220, 20, 60)),
    (25, "rider", (255, 0, 0)),
    (26, "car", (0, 0, 142)),
    (27, "truck", (0, 0, 70)),
    (28, "bus", (0, 60, 100)),
    (31, "train", (0, 80, 100)),
    (32, "motorcycle", (0, 0, 230)),
    (33, "bicycle", (119, 11, 32)),
)

CITYSCAPES = LabelSpace(
    name="cityscapes",
    names=tuple(name for _, name, _ in _CITYSCAPES_CLASSES),
    colors=tuple(color for _, _, color in _CITYSCAPES_CLASSES),
    id_to_train={label_id: train for train, (label_id, _, _) in enumerate(_CITYSCAPES_CLASSES)},
)

# Cityscapes files named *_labelTrainIds.png already hold train ids.
CITYSCAPES_TRAIN_IDS = LabelSpace(
    name="cityscapes",
    names=CITYSCAPES.names,
    colors=CITYSCAPES.colors,
    id_to_train=None,
)

# CamVid, 11 classes as distributed with SegNet: values 0..10 are the classes, 11 is void.
CAMVID = LabelSpace(
    name="camvid",
    names=(
        "sky",
        "building",
        "pole",
        "road",
        "sidewalk",
        "tree",
        "sign",
        "fence",
        "car",
        "pedestrian",
        "bicyclist",
    ),
    colors=(
        (128, 128, 128),
        (128, 0, 0),
        (192, 192, 128),
        (128, 64, 128),
        (60, 40, 222),
        (128, 128, 0),
        (192, 128, 128),
        (64, 64, 128),
        (64, 0, 128),
        (64, 64, 0),
        (0, 128, 192),
    ),
    id_to_train={i: i for i in range(11)},
)

LABEL_SPACES: dict[str, LabelSpace] = {"cityscapes": CITYSCAPES, "camvid": CAMVID}


def get_label_space(name: str) -> LabelSpace:
    """The built-in label space called ``name``."""
    try:
        return LABEL_SPACES[name]
    except KeyError:
        raise ValueError(
            f"unknown label space {name!r}; known: {', '.join(sorted(LABEL_SPACES))}"
        ) from None
