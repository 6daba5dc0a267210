"""The audit step of the label job (jobs/label.py): its teacher labels the audit sources' images
with the pool's settings, and the store records how the pseudo labels compare with their truth
(core.audit).

The audit images go through Ray Data in chunks of `CHUNK` to a pool of teacher actors that run the
label job's own model step; each chunk comes back as its counts (a few small arrays), which the
driver adds up. Its cost is the audit set's size, whatever the pool's; the pool's class shares
come from the store's per-shard totals.
"""

from __future__ import annotations

import pickle

import numpy as np
import ray

from core.audit import Audit, AuditCounts, audit_samples, describe_source, summarize
from core.configs import DataSource, LabelJobConfig
from core.datasets import open_source
from core.errors import ConfigError
from core.store import LabelStore

# Audit images per Ray Data row (one model call of batch_size at a time within it).
CHUNK = 16


class AuditModel:
    """The teacher actors of the audit: predict a chunk of audit samples and count them."""

    def __init__(
        self,
        step,
        sources: list[dict],
        num_classes: int,
        ignore_index: int,
        batch_size: int,
        cpus: float,
    ) -> None:
        import torch

        torch.set_num_threads(max(1, int(cpus)))  # as a teacher actor of the pool does
        self.predict = step.make_predictor()
        self.datasets = [open_source(DataSource.model_validate(s)) for s in sources]
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        counts = []
        for source, indices in zip(batch["source"], batch["indices"], strict=True):
            dataset = self.datasets[int(source)]
            found = audit_samples(
                dataset.__getitem__,
                [int(i) for i in indices],
                self.predict,
                self.num_classes,
                self.batch_size,
                self.ignore_index,
            )
            counts.append(pickle.dumps(found, protocol=pickle.HIGHEST_PROTOCOL))
        return {"counts": np.array(counts, dtype=object)}


def audit_chunks(config: LabelJobConfig, class_names: list[str]) -> list[dict]:
    """The audit's Ray Data rows: ``{"source", "indices"}``, `CHUNK` samples each.

    Raises:
        ConfigError: An audit source has images without labels, or other classes than the
            teacher's.
    """
    rows = []
    for k, source in enumerate(config.audit):
        dataset = open_source(source)
        names = None if dataset.label_space is None else list(dataset.label_space.names)
        if not dataset.is_labeled():
            raise ConfigError(f"audit {describe_source(source)}: its images have no labels")
        if names != class_names:
            raise ConfigError(
                f"audit {describe_source(source)}: classes {names} differ from the teacher's "
                f"{class_names}"
            )
        for first in range(0, len(dataset), CHUNK):
            rows.append(
                {"source": k, "indices": list(range(first, min(first + CHUNK, len(dataset))))}
            )
    return rows


def recorded_audit(config: LabelJobConfig, store: LabelStore) -> Audit | None:
    """The store's audit when it was made of the same audit sources (a rerun that labeled
    nothing new keeps it), else None."""
    found = store.attributes.get("audit")
    if found is None:
        return None
    audit = Audit.model_validate(found)
    return audit if audit.sources == [describe_source(s) for s in config.audit] else None


def run_audit(config: LabelJobConfig, store: LabelStore, step) -> Audit:
    """Audit the store's teacher on ``config.audit`` (Ray is up: the label job started it) and
    record the audit in the store.

    Args:
        config: The label job.
        store: Its store, labeled.
        step: The label job's model step (jobs.label.ModelStep).
    """
    space = store.label_space
    rows = audit_chunks(config, list(space.names))
    counts = AuditCounts(space.num_classes)
    if rows:
        pool = ray.data.ActorPoolStrategy(min_size=1, max_size=min(config.num_actors, len(rows)))
        results = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
            AuditModel,
            fn_constructor_kwargs={
                "step": step,
                "sources": [s.model_dump(mode="json") for s in config.audit],
                "num_classes": space.num_classes,
                "ignore_index": space.ignore_index,
                "batch_size": config.batch_size,
                "cpus": config.cpus_per_actor,
            },
            batch_size=1,
            batch_format="numpy",
            compute=pool,
            num_cpus=config.cpus_per_actor,
            num_gpus=config.gpus_per_actor,
            **({"resources": step.resources} if step.resources else {}),
        )
        for row in results.iter_rows():
            counts.merge(pickle.loads(row["counts"]))
    described = [describe_source(s) for s in config.audit]
    audit = summarize(counts, list(space.names), described, store.class_pixels())
    store.set_audit(audit.model_dump(mode="json"))
    return audit
