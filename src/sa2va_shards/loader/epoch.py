"""The epoch plan: which samples an epoch serves, in what order, and which rank and worker
serves each (pure numpy, no I/O).

An epoch is a list of *positions*; position p names one sample: `shard[p]` (an index into all
sources' shards) and `item[p]` (the sample's index in that shard, in tar order). The list
depends only on the sources, the seed and the epoch number, never on ranks or workers:

1. Per source, its samples for the epoch, `count` of them: as many passes over the source as
   that needs (a repeat of 4 is four passes, each with a new shard order; a fractional repeat
   or a weight ends part-way through the last pass). Within a pass the shards are permuted
   and taken `interleave` at a time; the items of such a group are merged in a seeded random
   order, each shard still front to back, so a worker streams a few shards at once.
2. The sources are merged by a seeded permutation of their labels: each source gets exactly
   its count, spread at random over the epoch.
3. Positions already consumed (a resumed epoch) are removed; the rest is cut into one block
   per rank (equal blocks when `even`: the last `remaining % world_size` positions are left
   out), each block into one contiguous piece per DataLoader worker.

So a resume needs only the set of consumed positions, whatever the number of ranks and
workers before and after; it is stored as sorted [start, stop) ranges.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["PlanSource", "epoch_plan", "from_ranges", "source_counts", "split", "to_ranges"]


@dataclass(frozen=True)
class PlanSource:
    """One source of the epoch: its shards (global indices) and their sample counts."""

    shards: tuple[int, ...]
    sizes: tuple[int, ...]
    #: positions this source gets per epoch.
    count: int


def source_counts(sizes: Sequence[int], *, repeats: Sequence[float | None],
                  weights: Sequence[float | None], samples_per_epoch: int | None) -> list[int]:
    """Samples per epoch of each source: `repeat` x its size, or, for weighted sources, its
    share of what is left of `samples_per_epoch` (largest remainders, so counts sum exactly).

    Raises:
        ValueError: weights without `samples_per_epoch`, or repeats alone exceeding it.
    """
    counts = [round(r * n) if r is not None else 0 for n, r in zip(sizes, repeats, strict=True)]
    weighted = [i for i, w in enumerate(weights) if w is not None]
    if samples_per_epoch is not None and not weighted:
        if sum(counts) != samples_per_epoch:  # repeats give proportions, scaled to the total
            weights, weighted = [c or None for c in counts], [i for i, c in enumerate(counts)
                                                              if c]
            counts = [0] * len(counts)
    if not weighted:
        return counts
    if samples_per_epoch is None:
        raise ValueError("weighted sources need samples_per_epoch (the epoch's length)")
    left = samples_per_epoch - sum(counts)
    if left < 0:
        raise ValueError(f"repeated sources alone take {sum(counts)} samples, more than "
                         f"samples_per_epoch={samples_per_epoch}")
    w = np.array([weights[i] for i in weighted], dtype=float)
    exact = w / w.sum() * left
    share = np.floor(exact).astype(int)
    for j in np.argsort(-(exact - share), kind="stable")[: left - int(share.sum())]:
        share[j] += 1
    for i, s in zip(weighted, share, strict=True):
        counts[i] = int(s)
    return counts


def _interleave(parts: Sequence[np.ndarray], rng: np.random.Generator | None) -> np.ndarray:
    """The parts merged: a seeded random interleaving (in order without `rng`) in which
    each part keeps its own order and appears exactly len(part) times."""
    labels = np.repeat(np.arange(len(parts)), [len(x) for x in parts])
    if rng is not None:
        labels = rng.permutation(labels)
    out = np.empty(len(labels), np.int64)
    if len(labels):
        out[np.argsort(labels, kind="stable")] = np.concatenate(parts)
    return out


def _source_stream(src: PlanSource, *, seed: int, epoch: int, index: int, interleave: int,
                   shuffle: bool) -> np.ndarray:
    """The source's `count` samples for the epoch, as flat ids: shard index * 2**32 + item."""
    total, step = sum(src.sizes), max(1, interleave)
    if src.count == 0 or total == 0:
        return np.zeros(0, np.int64)
    out = []
    for p in range(-(-src.count // total)):
        rng = np.random.default_rng([seed, epoch, index, p]) if shuffle else None
        order = rng.permutation(len(src.shards)) if rng else np.arange(len(src.shards))
        for start in range(0, len(order), step):
            group = [(src.shards[g] << 32) + np.arange(src.sizes[g])
                     for g in order[start:start + step]]
            out.append(_interleave(group, rng))
    return np.concatenate(out)[:src.count]


def epoch_plan(sources: Sequence[PlanSource], *, seed: int, epoch: int, interleave: int = 1,
               shuffle: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(source, shard, item) per position of the epoch (module docstring, steps 1-2)."""
    streams = [_source_stream(s, seed=seed, epoch=epoch, index=i, interleave=interleave,
                              shuffle=shuffle) for i, s in enumerate(sources)]
    rng = np.random.default_rng([seed, epoch, 1 << 20]) if shuffle else None
    ids = _interleave(streams, rng)
    shard = (ids >> 32).astype(np.int32)
    owner = np.zeros(max((max(s.shards, default=-1) for s in sources), default=-1) + 1, np.int32)
    for i, s in enumerate(sources):  # every shard belongs to one source
        owner[list(s.shards)] = i
    # int32: the plan is held by the main process and every worker (12 bytes a position)
    return owner[shard], shard, (ids & 0xFFFFFFFF).astype(np.int32)


def split(remaining: np.ndarray, *, world_size: int, rank: int, workers: int, worker: int,
          even: bool) -> np.ndarray:
    """This (rank, worker)'s positions: a contiguous block of the remaining positions per rank
    (equal blocks when `even`), cut into `workers` contiguous pieces (module docstring)."""
    if even:
        per_rank = len(remaining) // world_size
        block = remaining[rank * per_rank:(rank + 1) * per_rank]
    else:
        block = np.array_split(remaining, world_size)[rank]
    return np.array_split(block, workers)[worker]


def to_ranges(positions: np.ndarray) -> list[list[int]]:
    """Sorted unique positions as [start, stop) ranges (compact JSON for resume states)."""
    p = np.unique(np.asarray(positions, dtype=np.int64))
    if len(p) == 0:
        return []
    breaks = np.flatnonzero(np.diff(p) != 1) + 1
    starts, stops = p[np.r_[0, breaks]], p[np.r_[breaks - 1, len(p) - 1]] + 1
    return [[int(a), int(b)] for a, b in zip(starts, stops, strict=True)]


def from_ranges(ranges: Sequence[Sequence[int]]) -> np.ndarray:
    """The positions of [start, stop) ranges."""
    if not ranges:
        return np.zeros(0, np.int64)
    return np.concatenate([np.arange(int(a), int(b)) for a, b in ranges])
