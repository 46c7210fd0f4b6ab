"""Shard membership, decided from the sorted input before any work starts (pure)."""

from __future__ import annotations

from collections.abc import Sequence

from sa2va_shards.errors import Level, Reason
from sa2va_shards.records import ItemRef, RejectRecord, ShardPlan
from sa2va_shards.schema import sample_key

__all__ = ["plan_shards", "shard_name"]


def shard_name(dataset: str, index: int) -> str:
    """`<dataset>-000000.tar`."""
    return f"{dataset}-{index:06d}.tar"


def plan_shards(
    items: Sequence[ItemRef], *, dataset: str, samples_per_shard: int
) -> tuple[list[ShardPlan], list[RejectRecord]]:
    """Sort items by source id and cut them into fixed slices of `samples_per_shard`.

    Items whose key repeats an earlier one (same source id, or ids that differ only in
    characters a key cannot hold) are rejected as `duplicate_id`: the first one wins.

    Returns:
        (plans in shard order, reject rows for the duplicates).
    """
    if samples_per_shard < 1:
        raise ValueError("samples_per_shard must be >= 1")
    seen: dict[str, str] = {}
    unique, rejects = [], []
    for item in sorted(items, key=lambda r: r.source_id):
        key = sample_key(item.source_id)
        if key in seen:
            rejects.append(RejectRecord(
                source_id=item.source_id, level=Level.SAMPLE.value, object_id="", stage="plan",
                reason=Reason.DUPLICATE_ID.value, shard="",
                detail=f"key {key!r} already used by source id {seen[key]!r}"))
            continue
        seen[key] = item.source_id
        unique.append(item)
    plans = [
        ShardPlan(index=i, name=shard_name(dataset, i),
                  items=tuple(unique[start:start + samples_per_shard]))
        for i, start in enumerate(range(0, len(unique), samples_per_shard))
    ]
    return plans, rejects
