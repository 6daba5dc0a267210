"""Label Studio's side of pre-annotation: label maps as brush-label regions (RLE from
label-studio-sdk's own encoder), the labeling config that shows them, and reading a project's
labeling config back (which tags, which labels).

Used by the review export (core.review, static tasks) and by the control plane's ML backend
(services/routes_label_studio.py, predictions on request). Needs label-studio-sdk (the ``review``
extra) for the RLE.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.errors import ConfigError
from core.labels import IGNORE_INDEX, LabelSpace

BRUSH, IMAGE_TAG = "label", "image"  # tag names of the labeling config selftrain writes


def brush_regions(
    label: np.ndarray,
    class_names: Sequence[str],
    from_name: str = BRUSH,
    to_name: str = IMAGE_TAG,
    region_prefix: str = "",
    shown: Sequence[str] | None = None,
) -> list[dict]:
    """One ``brushlabels`` region per class present in ``label``, as Label Studio's results.

    Args:
        label: (H, W) uint8 train ids (``IGNORE_INDEX``: no region).
        class_names: The classes, index = train id.
        from_name: The BrushLabels tag's name.
        to_name: The Image tag's name.
        region_prefix: Prefix of each region's id (``<prefix><class id>``).
        shown: Only these classes (the labels the project's config has); default all.
    """
    from label_studio_sdk.converter.brush import mask2rle

    height, width = label.shape
    regions = []
    for c in np.unique(label):
        if c == IGNORE_INDEX or (shown is not None and class_names[c] not in shown):
            continue
        regions.append(
            {
                "id": f"{region_prefix}{c}",
                "type": "brushlabels",
                "from_name": from_name,
                "to_name": to_name,
                "original_width": width,
                "original_height": height,
                "image_rotation": 0,
                "value": {
                    "format": "rle",
                    "rle": mask2rle(((label == c) * 255).astype(np.uint8)),
                    "brushlabels": [class_names[c]],
                },
            }
        )
    return regions


def labeling_config(space: LabelSpace) -> str:
    """A labeling config with an Image tag and a BrushLabels tag of the classes and their colors."""
    labels = "".join(
        f'<Label value="{n}" background="#{r:02x}{g:02x}{b:02x}"/>'
        for n, (r, g, b) in zip(space.names, space.colors, strict=True)
    )
    return (
        f'<View><Image name="{IMAGE_TAG}" value="${IMAGE_TAG}"/>'
        f'<BrushLabels name="{BRUSH}" toName="{IMAGE_TAG}">{labels}</BrushLabels></View>'
    )


@dataclass(frozen=True)
class BrushConfig:
    """What a project's labeling config says about brush labels.

    Attributes:
        from_name: The BrushLabels tag's name.
        to_name: The Image tag it labels.
        data_key: The task data key holding the image URL (``$image`` -> ``image``).
        labels: Its label values.
    """

    from_name: str
    to_name: str
    data_key: str
    labels: tuple[str, ...]


def brush_config(config: str) -> BrushConfig:
    """The first BrushLabels tag of a labeling config and the Image tag it labels.

    Raises:
        ConfigError: Not XML, no BrushLabels tag, or its Image tag is missing.
    """
    try:
        root = ElementTree.fromstring(config)
    except ElementTree.ParseError as exc:
        raise ConfigError(f"the labeling config is not XML: {exc}") from exc
    brush = next(root.iter("BrushLabels"), None)
    if brush is None:
        raise ConfigError("the labeling config has no BrushLabels tag to pre-annotate")
    to_name = brush.get("toName", "")
    image = next((tag for tag in root.iter("Image") if tag.get("name") == to_name), None)
    if image is None:
        raise ConfigError(f"the labeling config has no Image tag named {to_name!r}")
    value = image.get("value", "")
    if not value.startswith("$"):
        raise ConfigError(f"the Image tag {to_name!r} takes no task data ({value!r})")
    labels = tuple(tag.get("value", "") for tag in brush.iter("Label"))
    return BrushConfig(brush.get("name", ""), to_name, value[1:], labels)
