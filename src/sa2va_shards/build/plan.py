"""Shard membership, decided from the sorted input before any work starts (pure)."""

from __future__ import annotations

from collections.abc import Sequence

from sa2va_shards.errors import Level, Reason
from sa2va_shards.format import sample_key
from sa2va_shards.records import BAD_ITEM, ItemRef, RejectRecord, ShardPlan

__all__ = ["id_problem", "plan_shards", "printable_id", "shard_name"]


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


def plan_shards(
    items: Sequence[ItemRef], *, dataset: str, samples_per_shard: int
) -> tuple[list[ShardPlan], list[RejectRecord]]:
    """Sort items by source id and cut them into fixed slices of `samples_per_shard`.

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
    plans = [
        ShardPlan(index=i, name=shard_name(dataset, i),
                  items=tuple(unique[start:start + samples_per_shard]))
        for i, start in enumerate(range(0, len(unique), samples_per_shard))
    ]
    return plans, rejects
