"""Drift between the loops of a run: each loop's label store compared with the previous loop's.

Self-training can teach a class away: a teacher that under-predicts a class writes fewer pixels of
it, its student learns to predict it less, and the next loop's labels hold fewer still. Per class
this compares the pool's pseudo share (the store's per-class pixel totals), the audit's IoU, and
the share of confident audit pixels of two label stores of the same source; a class whose pool
share is below ``fraction`` of its labeled share (the audit's true share) is named as taught away.

Everything is read from two store summaries (``LabelStore.summary``): no image is read.
"""

from __future__ import annotations

from pydantic import BaseModel

from core.audit import Audit

# A class whose pool pseudo share is below this fraction of its labeled share is taught away.
TAUGHT_AWAY_BELOW = 0.5


class ClassDrift(BaseModel):
    """One class, from the previous loop's store to this one's.

    Attributes:
        name: The class.
        share_before: Its share of the previous store's pseudo-labeled pixels.
        share_now: Its share of this store's.
        labeled_share: Its share of the audit's true labels (None: no audit).
        iou_before: Its audit IoU in the previous store (None: no audit, or undefined).
        iou_now: Its audit IoU in this store.
        taught_away: ``share_now`` is below the fraction of ``labeled_share``.
    """

    name: str
    share_before: float | None
    share_now: float | None
    labeled_share: float | None
    iou_before: float | None
    iou_now: float | None
    taught_away: bool


class Drift(BaseModel):
    """A label stage against the same source's label stage one loop earlier.

    Attributes:
        stage: This label stage.
        previous: The previous loop's.
        fraction: The taught-away threshold (share of the labeled share).
        confident_share_before: Share of confident audit pixels in the previous store.
        confident_share_now: In this one.
        miou_before: Audit mIoU of the previous store.
        miou_now: Of this one.
        taught_away: The classes taught away now (pool share below ``fraction`` of labeled).
        classes: Per class, in the store's class order.
    """

    stage: str
    previous: str
    fraction: float
    confident_share_before: float | None
    confident_share_now: float | None
    miou_before: float | None
    miou_now: float | None
    taught_away: list[str]
    classes: list[ClassDrift]


def pool_shares(summary: dict) -> dict[str, float] | None:
    """Each class's share of a store's pseudo-labeled pixels (None: nothing labeled yet)."""
    pixels = summary.get("pixels_per_class") or {}
    total = sum(pixels.values())
    return {name: n / total for name, n in pixels.items()} if total else None


def audit_of(summary: dict | None) -> Audit | None:
    """The audit a store summary holds, if any."""
    found = (summary or {}).get("audit")
    return None if found is None else Audit.model_validate(found)


def taught_away(summary: dict, fraction: float = TAUGHT_AWAY_BELOW) -> list[str]:
    """The classes whose pool pseudo share in a store is below ``fraction`` of their labeled share
    (the audit's true share); none without an audit."""
    audit, shares = audit_of(summary), pool_shares(summary)
    if audit is None or shares is None:
        return []
    return [
        c.name
        for c in audit.classes
        if c.truth_share > 0 and shares.get(c.name, 0.0) < fraction * c.truth_share
    ]


def drift(
    previous: dict,
    current: dict,
    stage: str,
    previous_stage: str,
    fraction: float = TAUGHT_AWAY_BELOW,
) -> Drift:
    """``current`` store summary against ``previous`` (the same source, one loop earlier)."""
    before, now = audit_of(previous), audit_of(current)
    shares_before, shares_now = pool_shares(previous) or {}, pool_shares(current) or {}
    labeled = {c.name: c.truth_share for c in (now or before).classes} if (now or before) else {}
    iou_before = {c.name: c.iou for c in before.classes} if before else {}
    iou_now = {c.name: c.iou for c in now.classes} if now else {}
    names = list(current.get("pixels_per_class") or previous.get("pixels_per_class") or {})
    classes = []
    for name in names:
        share, truth = shares_now.get(name), labeled.get(name)
        away = share is not None and bool(truth) and share < fraction * truth
        classes.append(
            ClassDrift(
                name=name,
                share_before=shares_before.get(name),
                share_now=share,
                labeled_share=truth,
                iou_before=iou_before.get(name),
                iou_now=iou_now.get(name),
                taught_away=away,
            )
        )
    return Drift(
        stage=stage,
        previous=previous_stage,
        fraction=fraction,
        confident_share_before=before.confident_share if before else None,
        confident_share_now=now.confident_share if now else None,
        miou_before=before.miou if before else None,
        miou_now=now.miou if now else None,
        taught_away=[c.name for c in classes if c.taught_away],
        classes=classes,
    )
