"""Shard membership, decided from the sorted input before any work starts (pure).

Boundaries are content-defined: a shard ends after an id whose hash says so (with a minimum
and a maximum size), never at a fixed count. Inserting or removing inputs then changes only
the shards around them, and every other shard keeps the same items, so an incremental build
reuses it (`build/store.py`). A fixed-count cut would shift every later shard by one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from sa2va_shards.errors import Level, Reason
from sa2va_shards.format import sample_key
from sa2va_shards.records import BAD_ITEM, ItemRef, RejectRecord, ShardPlan

__all__ = ["id_problem", "plan_shards", "printable_id", "shard_bounds", "shard_name"]


def shard_name(dataset: str, index: int) -> str:
    """`<dataset>-000000.tar`."""
    return f"{dataset}-{index:06d}.tar"


def printable_id(source_id: object) -> str:
    """The id as valid UTF-8 text for a reject row (a lone surrogate becomes `\\udXXX`)."""
    text = source_id if isinstance(source_id, str) else repr(source_id)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def id_problem(source_id: object) -> str | None:
    """Why a source id cannot name a sample, or None. Ids go into parquet and tar member
    names: they must be non-empty UTF-8 text (no lone surrogates) without NUL."""
    if not isinstance(source_id, str):
        return f"source id must be text, got {type(source_id).__name__}"
    if not source_id.strip():
        return "empty source id"
    if "\0" in source_id:
        return "source id holds a NUL character"
    if printable_id(source_id) != source_id:
        return "source id is not valid Unicode text (a lone surrogate)"
    return None


def _index_reject(item: ItemRef, reason: str, detail: str) -> RejectRecord:
    return RejectRecord(source_id=printable_id(item.source_id), level=Level.SAMPLE.value,
                        object_id="", stage="index", reason=reason, detail=detail, shard="")


def _bad_at_index(item: ItemRef) -> RejectRecord | None:
    """A reject row for an item the reader or its id already condemned, else None."""
    bad = item.data.get(BAD_ITEM)
    if bad is not None:
        return _index_reject(item, bad["reason"], bad["detail"])
    problem = id_problem(item.source_id)
    if problem is not None:
        return _index_reject(item, Reason.BAD_ANNOTATION.value, problem)
    return None


def shard_bounds(samples_per_shard: int) -> tuple[int, int, int]:
    """(min size, max size, divisor) of content-defined shards averaging `samples_per_shard`.

    After `min` items, each id ends its shard with probability 1/divisor, so sizes are
    min - 1 + a geometric count of mean divisor: on average `samples_per_shard`. The max (2x)
    bounds a task's time and memory; ~10% of shards hit it at 256 (a forced cut moves with
    insertions before it, until the next natural boundary).
    """
    low = max(1, samples_per_shard // 4)
    return low, 2 * samples_per_shard, samples_per_shard - low + 1


def _id_hash(source_id: str) -> int:
    # sha256, not hash(): the same on every process and Python (PYTHONHASHSEED)
    return int.from_bytes(hashlib.sha256(source_id.encode("utf-8")).digest()[:8], "big")


def _cut(items: list[ItemRef], samples_per_shard: int) -> list[list[ItemRef]]:
    low, high, divisor = shard_bounds(samples_per_shard)
    groups: list[list[ItemRef]] = [[]]
    for item in items:
        group = groups[-1]
        group.append(item)
        if len(group) >= high or (len(group) >= low
                                  and _id_hash(item.source_id) % divisor == 0):
            groups.append([])
    return [g for g in groups if g]


def plan_shards(
    items: Sequence[ItemRef], *, dataset: str, samples_per_shard: int
) -> tuple[list[ShardPlan], list[RejectRecord]]:
    """Sort items by source id and cut them into content-defined shards of `samples_per_shard`
    items on average (`shard_bounds`: at least a quarter of it, at most twice it).

    Items the index marked bad (`records.bad_item`) or whose id cannot name a sample are
    rejected first (stage `index`). Items whose key repeats an earlier one (same source id, or
    ids that differ only in characters a key cannot hold) are rejected as `duplicate_id`: the
    first one wins.

    Returns:
        (plans in shard order, reject rows for the bad items and the duplicates).
    """
    if samples_per_shard < 1:
        raise ValueError("samples_per_shard must be >= 1")
    seen: dict[str, str] = {}
    unique, rejects = [], []
    for item in sorted(items, key=lambda r: printable_id(r.source_id)):
        bad = _bad_at_index(item)
        if bad is not None:
            rejects.append(bad)
            continue
        key = sample_key(item.source_id)
        if key in seen:
            rejects.append(RejectRecord(
                source_id=item.source_id, level=Level.SAMPLE.value, object_id="", stage="plan",
                reason=Reason.DUPLICATE_ID.value, shard="",
                detail=f"key {key!r} already used by source id {seen[key]!r}"))
            continue
        seen[key] = item.source_id
        unique.append(item)
    plans = [ShardPlan(index=i, name=shard_name(dataset, i), items=tuple(group))
             for i, group in enumerate(_cut(unique, samples_per_shard))]
    return plans, rejects
