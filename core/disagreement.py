"""Teacher–student disagreement: how much of an image's pseudo labels another model labels
otherwise. A reviewer's time is best spent where two models disagree (query by committee): either
the teacher was wrong there, or the student learned something the teacher did not know.

The other model's labels come from another label store over the same images (a later loop's label
stage is exactly the student labeling the same source: no inference here), or from a checkpoint
run on a bounded sample of the images.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.errors import ConfigError
from core.labels import IGNORE_INDEX
from core.store import ImageStatus, LabelStore


def disagreement(first: np.ndarray, second: np.ndarray, ignore_index: int = IGNORE_INDEX) -> float:
    """Share of the pixels that are a class in both label maps and differ (NaN: none such)."""
    both = (first != ignore_index) & (second != ignore_index)
    counted = int(both.sum())
    return float((first[both] != second[both]).sum() / counted) if counted else float("nan")


def store_disagreement(store: LabelStore, other: LabelStore, indices: np.ndarray) -> np.ndarray:
    """For each of ``indices`` (done images of ``store``), its disagreement with ``other``'s label
    of the same image path; NaN where ``other`` has no done label of that image and size.

    Label maps are read one shard and image size at a time on each side.

    Raises:
        ConfigError: The stores' classes differ.
    """
    if list(store.label_space.names) != list(other.label_space.names):
        raise ConfigError(
            f"{other.path} has classes {list(other.label_space.names)}, {store.path} has "
            f"{list(store.label_space.names)}: disagreement needs the same classes"
        )
    where = {path: k for k, path in enumerate(other.image_paths())}
    other_sizes, other_status = other.tables["size"][:], other.statuses()
    sizes = store.tables["size"][:]
    scores = np.full(len(indices), np.nan)
    position = {int(index): k for k, index in enumerate(indices)}
    for _, members in store.shards_of(indices):
        paths = store.paths_of(members)
        for height, width in {tuple(sizes[i]) for i in members}:
            pairs = [
                (int(i), where[p])
                for i, p in zip(members, paths, strict=True)
                if tuple(sizes[i]) == (height, width)
                and p in where
                and other_status[where[p]] == ImageStatus.DONE
                and tuple(other_sizes[where[p]]) == (height, width)
            ]
            if not pairs:
                continue
            ours = store.image_arrays(int(height), int(width))[0]
            theirs = other.image_arrays(int(height), int(width))[0]
            mine = ours.get_orthogonal_selection(([i for i, _ in pairs], slice(None), slice(None)))
            order = np.argsort([j for _, j in pairs])
            picked = np.array([j for _, j in pairs])[order]
            read = theirs.get_orthogonal_selection((picked, slice(None), slice(None)))
            theirs_in_order = np.empty_like(read)
            theirs_in_order[order] = read
            for k, (index, _) in enumerate(pairs):
                scores[position[index]] = disagreement(mine[k], theirs_in_order[k])
    return scores


def model_disagreement(
    store: LabelStore, indices: Sequence[int], checkpoint: str, device: str = "cpu"
) -> np.ndarray:
    """For each of ``indices``, the disagreement of its pseudo label with ``checkpoint``'s
    prediction of its image (one forward pass per image: give a bounded sample)."""
    import torch

    from core.checkpoint import load_model
    from core.inference import predict
    from core.io import read_image

    model, space, _ = load_model(checkpoint, device)
    if list(space.names) != list(store.label_space.names):
        raise ConfigError(
            f"{checkpoint} predicts {list(space.names)}, {store.path} has "
            f"{list(store.label_space.names)}: disagreement needs the same classes"
        )
    scores = np.full(len(indices), np.nan)
    with torch.inference_mode():
        for k, index in enumerate(indices):
            label, _ = predict(
                model.eval(), read_image(store.image_path(int(index))), device=device
            )
            scores[k] = disagreement(store.label(int(index)), label)
    return scores
