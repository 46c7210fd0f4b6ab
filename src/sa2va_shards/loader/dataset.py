"""Streaming loader over one build or a mixture of builds: plan, split, resume, skip bad data.

One epoch, as every rank and DataLoader worker sees it:

1. The epoch's plan (`epoch.epoch_plan`): a list of positions, each naming one sample (source,
   shard, item). It depends on the sources, their repeats/weights, the seed and the epoch, never
   on ranks or workers. Each source's shards are permuted and merged `interleave` at a time;
   the sources are spread over the epoch by a seeded permutation with exact counts.
2. Split (`epoch.split`): the positions not yet consumed, one contiguous block per rank
   (equal blocks by default, so DDP ranks step together), one piece per worker.
3. A worker streams the shards its positions name, each front to back, a few at once, and
   skips (reads, never decodes) the samples that are not its own; a shard is closed after its
   last position. A shuffle buffer reorders the raw samples.
4. Samples are decoded with their source's options (`decode.decode_sample`, choices seeded
   with (seed, epoch, position)) and, with an encoder, tokenized; a sample that fails is
   skipped, counted and reported.

Every sample carries `__progress__` = its position; the consumer (`ShardDataset.observe`,
called by `ShardLoader` for every batch the training loop receives) marks it consumed, and the
consumed positions (as ranges) are the resume state: a restore on any number of ranks and
workers removes them from the plan and splits the rest. Nothing is replayed: a resumed worker
opens only the shards that still hold its positions.

Training loop (one process per rank)::

    ds = ShardDataset(build_dir_or_mixture, LoaderConfig(task="mixed", max_objects=5),
                      rank=r, world_size=w)
    loader = ShardLoader(ds, batch_size=8, num_workers=4, device="cuda")
    if ckpt:                                  # any world size and worker count
        loader.load_state_dict(ckpt["loader"])
    for epoch in range(ds.epoch, epochs):
        if epoch != ds.epoch:
            loader.set_epoch(epoch)           # new order; drops the resume position
        for batch in loader:                  # resumes mid-epoch after load_state_dict
            step(batch)
            if time_to_save:                  # with torch.distributed initialised the state
                save({"model": ..., "loader": loader.state_dict()})   # holds every rank
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from sa2va_shards.config import VisionConfig
from sa2va_shards.errors import ConfigError, CorruptDataError, ErrorBoundary, Tolerance
from sa2va_shards.format import POOLING, SCHEMA_VERSION
from sa2va_shards.loader import gpu_decode
from sa2va_shards.loader.batch import collate, to_device
from sa2va_shards.loader.decode import (
    OTHER_TASKS,
    TASKS,
    Wording,
    build_tasks,
    decode_sample,
    wanted_member,
)
from sa2va_shards.loader.encode import Encoder
from sa2va_shards.loader.epoch import (
    PlanSource,
    epoch_plan,
    from_ranges,
    source_counts,
    split,
    to_ranges,
)
from sa2va_shards.loader.mixture import MixSource, Mixture, load_mixture
from sa2va_shards.loader.remote import ensure_local, mirror
from sa2va_shards.loader.sa2va import collate_sa2va, encode_sample, model_inputs
from sa2va_shards.loader.stream import (
    CorruptDataWarning,
    TarStream,
    read_build,
    resolve_source,
    shard_keys,
    shuffled,
)
from sa2va_shards.manifest import CARD
from sa2va_shards.stores import cache_root, is_url

__all__ = [
    "CorruptDataError",
    "CorruptDataWarning",
    "LoaderConfig",
    "ShardDataset",
    "ShardLoader",
    "SkippedSamplesWarning",
    "check_preprocessing",
    "collate",
]

log = logging.getLogger(__name__)

Task = Literal["mask_to_caption", "caption_to_mask", "gcg", "chat", "mixed"]
GtMasks = Literal["none", "image", "full", "both"]
_STATE_FORMAT = 2
#: skip reasons that are a policy, not corruption (reported once per pass, never raised).
QUIET_REASONS = frozenset({"no_usable_objects", "task_not_served", "too_long", "min_k"})


class SkippedSamplesWarning(UserWarning):
    """Intact samples the loader did not serve in a pass (counts by reason)."""


@dataclass(frozen=True, kw_only=True)
class LoaderConfig:
    """What the training side expects from a build, and how to serve it."""

    #: InternVL geometry the model uses; the build's grid/tokens must match it.
    vision: VisionConfig = field(default_factory=VisionConfig)
    #: side of the stored SAM2 image (g_pixel_values); must match the build.
    image_size: int = 1024
    #: prompt-mask pooling rule the build must have used.
    pooling: str = POOLING
    #: shard schema version the loader reads.
    schema_version: int = SCHEMA_VERSION
    #: mask -> caption (region captioning), caption -> mask (referring segmentation), gcg
    #: (grounded captions, GCG builds only), chat (conversation-only builds), or a seeded
    #: choice per sample and epoch among the tasks the sample serves.
    task: Task = "mask_to_caption"
    #: GT masks to ship: none, the 1024 masks, full resolution, or both.
    gt_masks: GtMasks = "image"
    #: 'packed' bits (8x smaller between processes; `to_device` unpacks) or dense uint8.
    gt_format: Literal["packed", "dense"] = "packed"
    #: at most this many objects per sample per step (seeded), None for all.
    max_objects: int | None = None
    #: region captioning only: 'drop' objects with K = 0 (no visual-prompt token), or 'keep'.
    k_zero: Literal["keep", "drop"] = "drop"
    #: region captioning: regions must cover at least this many grid cells; an object below it
    #: is not captioned, and a stored dialogue (Osprey) naming one is skipped (`min_k`), as
    #: Sa2VA v2's Osprey loader does with 4. 0: no minimum.
    min_k: int = 0
    #: InternVL dynamic tiles up to this many (+ thumbnail); 0 or 1 = the 448 thumbnail only.
    max_tiles: int = 0
    #: the worker's resize of a kept source (`image.store`) to the SAM2 input, thumbnail and
    #: tiles: torch's uint8 antialias (within 2 levels of Pillow, ~2.5x faster) or Pillow's
    #: bicubic itself (exactly Sa2VA's pixels). Images decoded on the device
    #: (`image_decode`) are resized there with `batch.resize_images`.
    resize_backend: Literal["torch", "pillow"] = "torch"
    #: where image JPEGs are decoded (`gpu_decode.py`): `auto` on the device when batches go
    #: to CUDA and torchvision is installed (nvJPEG), else in the workers; `worker` always in
    #: the workers; `device` always deferred to the main process (Pillow on a CPU device).
    image_decode: Literal["auto", "worker", "device"] = "auto"
    #: seed of every random choice (shard order, buffer, objects, questions).
    seed: int = 0
    #: shuffle shards and samples; False keeps build order (within the split).
    shuffle: bool = True
    #: raw samples held for shuffling per worker (~150-400 KB each).
    shuffle_buffer: int = 256
    #: shards of a source merged at a time in the epoch's order (each still read front to
    #: back): a worker streams this many at once, so a batch mixes more shards.
    interleave: int = 4
    #: local folder for builds on object storage (s3://, gs://, ...): their tables and a
    #: bounded cache of their shards (`remote.py`); None: `$SA2VA_SHARDS_CACHE/loader`
    #: (default ~/.cache/sa2va-shards/loader).
    cache_dir: str | None = None
    #: bytes of shards the cache keeps (least recently used go first).
    cache_bytes: int = 50 * 2**30
    #: every rank gets the same number of samples per pass (DDP steps in lockstep); at most
    #: world_size - 1 samples of the epoch's tail are left out. False: ranks differ by <= 1.
    even_ranks: bool = True
    #: raise `CorruptDataError` on a bad shard or sample instead of skipping it.
    strict: bool = False
    #: raise `CorruptDataError` after this many corrupt samples in a row in one worker (a
    #: wrong build or geometry, not bad data); None: skip any number.
    max_consecutive_errors: int | None = 1000
    #: check RLE strings (size, run totals) before pycocotools decodes them.
    validate_rle: bool = True
    #: question / answer templates of the conversations.
    wording: Wording = field(default_factory=Wording)
    #: video: frames per clip per step, drawn (seeded) from the stored frames and sorted, as
    #: Sa2VA's video datasets do (5); None serves every stored frame.
    frames: int | None = 5
    #: video referring segmentation: targets drawn per clip with replacement, as Sa2VA's video
    #: datasets do (5); 0 serves each target once (`max_objects` applies).
    video_targets: int = 5

    def __post_init__(self) -> None:
        if self.task not in (*TASKS, *OTHER_TASKS, "mixed"):
            raise ValueError(f"task {self.task!r}: one of {', '.join(TASKS + OTHER_TASKS)} or "
                             f"mixed")
        if self.gt_masks == "1024":  # the name before schema 2, kept for old scripts
            object.__setattr__(self, "gt_masks", "image")
        if self.gt_masks not in ("none", "image", "full", "both"):
            raise ValueError(f"gt_masks {self.gt_masks!r}: none, image, full or both")
        if self.gt_format not in ("packed", "dense") or self.k_zero not in ("keep", "drop"):
            raise ValueError(f"gt_format {self.gt_format!r} / k_zero {self.k_zero!r} invalid")
        if self.task not in ("mask_to_caption", "chat") and self.gt_masks == "none":
            raise ValueError(f"task {self.task!r} needs GT masks as targets; set gt_masks")
        if self.max_objects is not None and self.max_objects < 1:
            raise ValueError(f"max_objects must be >= 1 or None, got {self.max_objects}")
        if self.max_tiles < 0 or self.shuffle_buffer < 0 or self.video_targets < 0:
            raise ValueError("max_tiles, shuffle_buffer and video_targets must be >= 0")
        if self.min_k < 0:
            raise ValueError(f"min_k must be >= 0, got {self.min_k}")
        if self.interleave < 1:
            raise ValueError(f"interleave must be >= 1, got {self.interleave}")
        if self.image_decode not in ("auto", "worker", "device"):
            raise ValueError(f"image_decode {self.image_decode!r}: auto, worker or device")
        if self.resize_backend not in ("torch", "pillow"):
            raise ValueError(f"resize_backend {self.resize_backend!r}: torch or pillow")
        if self.frames is not None and self.frames < 1:
            raise ValueError(f"frames must be >= 1 or None, got {self.frames}")

    def expected_preprocessing(self) -> dict[str, Any]:
        """The dataset.json `preprocessing` fields this config requires."""
        v = self.vision
        return {"image_size": self.image_size, "grid": v.grid,
                "tokens_per_image": v.tokens_per_image, "pooling": self.pooling,
                "vision": {"image_size": v.image_size, "patch_size": v.patch_size,
                           "downsample_ratio": v.downsample_ratio}}


def check_preprocessing(card: dict[str, Any], cfg: LoaderConfig, *, where: str = "") -> None:
    """Refuse a build whose preprocessing fingerprint differs from what `cfg` expects.

    Raises:
        ConfigError: listing every mismatching field (build value vs loader value).
    """
    pre = card.get("preprocessing") or {}
    diffs = [f"schema_version: build {card.get('schema_version')!r}, loader {cfg.schema_version!r}"
             ] if card.get("schema_version") != cfg.schema_version else []
    for name, want in cfg.expected_preprocessing().items():
        have = pre.get(name)
        if name == "vision" and isinstance(have, dict):
            have = {k: have.get(k) for k in want}
        if have != want:
            diffs.append(f"{name}: build {have!r}, loader {want!r}")
    if diffs:
        raise ConfigError(
            f"{where or 'build'}: preprocessing does not match LoaderConfig ({'; '.join(diffs)}). "
            "Prompt masks, K and the <IMG_CONTEXT> counts are only valid for the geometry they "
            "were built with: rebuild the shards or change LoaderConfig.")


def _dist(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is None or world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank = torch.distributed.get_rank() if rank is None else rank
            world_size = torch.distributed.get_world_size() if world_size is None else world_size
        rank, world_size = rank or 0, world_size or 1
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} not in [0, world_size={world_size})")
    return rank, world_size


def _rank_consumed_check(state: dict[str, Any]) -> str | None:
    ranks, world = state.get("ranks") or [], int(state.get("world_size") or 1)
    if sorted(ranks) != list(range(world)):
        return (f"the state holds the progress of ranks {sorted(ranks)} of {world}: merge every "
                "rank's state (ShardDataset.merge_states), or save with torch.distributed "
                "initialised (state_dict then gathers all ranks)")
    return None


@dataclass
class _Source:
    """A source at run time: its shards, their keys, its card and its LoaderConfig."""

    name: str
    urls: list[str]
    keys: list[list[str]]
    card: dict[str, Any]
    counts: dict[str, int]
    cfg: LoaderConfig
    passes: float | None
    weight: float | None
    first_shard: int = 0


class _Cursor:
    """Reads one shard front to back and hands out the samples asked for, in tar order; a
    request behind the read position (the shard again, in a later pass) reopens it."""

    def __init__(self, open_stream: Callable[[], Iterator[dict]], keys: list[str]) -> None:
        self.open_stream, self.keys = open_stream, keys
        self.index = {k: i for i, k in enumerate(keys)}
        self.it: Iterator[dict] | None = None
        self.ahead: dict | None = None  # a sample read past a missing one
        self.pos, self.exhausted = -1, False

    def get(self, item: int) -> dict | None:
        if self.it is None or item <= self.pos:
            self.close()
            self.it, self.ahead, self.pos = iter(self.open_stream()), None, -1
            self.exhausted = False
        while not self.exhausted:
            raw = self.ahead if self.ahead is not None else next(self.it, None)
            self.ahead = None
            if raw is None:
                self.exhausted = True  # a short or damaged shard: reported by its stream
                break
            at = self.index.get(str(raw.get("__key__")), -1)
            if at > item:  # the wanted sample is missing (refused, damaged shard)
                self.ahead, self.pos = raw, item
                return None
            if at == item:
                self.pos = item
                return raw
        self.pos = item
        return None

    def finish(self) -> None:
        """Done with the shard: when its last sample was reached, read it to the end so the
        stream's end-of-shard checks (count, sha256) run; then close it."""
        if self.it is not None and not self.exhausted and self.pos >= len(self.keys) - 1:
            for _ in self.it:
                pass
        self.close()

    def close(self) -> None:
        close = getattr(self.it, "close", None)
        if close is not None:
            close()
        self.it = None


class ShardDataset(IterableDataset):
    """Iterable over one build's samples, or a mixture of builds (module docstring).

    `defer_images` (set by `ShardLoader` from `LoaderConfig.image_decode`): image JPEGs are
    shipped undecoded, to be decoded on the training device (`gpu_decode.py`).

    Args:
        source: a build directory (dataset.json + shards.parquet), a dataset folder (its
            `latest`), a folder of .tar shards, a brace pattern, a list of shard paths/URLs,
            or a `mixture.Mixture` (or the path of its YAML, ending in .yaml / .yml).
        cfg: what to serve and what every build must match (a mixture source may override
            `mixture.SOURCE_OPTIONS` for itself).
        rank, world_size: this process's place among data-parallel ranks; default from
            torch.distributed when initialised, else 0 and 1.
        encoder: tokenizes each sample's conversation (`encode.Encoder`); with it, samples
            carry `input_ids` / `labels` and `ShardLoader` yields Sa2VA's model input dict
            (`sa2va.model_inputs`). Needs full-resolution GT masks (`gt_masks='full'`).
        samples_per_epoch: an epoch of exactly this many samples over all ranks (the
            sources' repeats/weights give the proportions; a source shorter than its share is
            drawn again in a new order): the epoch-free mode, for a fixed step count.

    Raises:
        ConfigError: a build's preprocessing does not match, a build cannot serve its task,
            a bad mixture, or no dataset.json was found and `cfg.strict`.
    """

    #: image JPEGs shipped undecoded for the device (set by `ShardLoader`, per pass).
    defer_images: bool = False

    def __init__(self, source: Any, cfg: LoaderConfig | None = None, *,
                 rank: int | None = None, world_size: int | None = None,
                 encoder: Encoder | None = None, samples_per_epoch: int | None = None) -> None:
        super().__init__()
        self.cfg = cfg or LoaderConfig()
        self.encoder = encoder
        if encoder is not None and self.cfg.gt_masks not in ("full", "both"):
            raise ConfigError("a Sa2VA batch (encoder=...) carries full-resolution masks: "
                              "use LoaderConfig(gt_masks='full')")
        self.mixture = _as_mixture(source)
        if samples_per_epoch is not None:  # a fixed-length epoch, whatever the sources hold
            self.mixture = replace(self.mixture, samples_per_epoch=samples_per_epoch)
        self.sources = [self._open_source(s) for s in self.mixture.sources]
        self.urls = [u for s in self.sources for u in s.urls]
        self.card, self.shard_counts = self.sources[0].card, self.sources[0].counts
        offset = 0
        for s in self.sources:
            s.first_shard, offset = offset, offset + len(s.urls)
        self._counts = source_counts(
            [sum(map(len, s.keys)) for s in self.sources],
            repeats=[s.passes for s in self.sources], weights=[s.weight for s in self.sources],
            samples_per_epoch=self.mixture.samples_per_epoch)
        self.rank, self.world_size = _dist(rank, world_size)
        self.epoch = 0
        self._plan_cache: tuple[int, tuple[np.ndarray, ...]] | None = None
        self._consumed = np.zeros(0, dtype=bool)
        self._stats: Counter = Counter()
        self._observed: Counter = Counter()
        self._seen_details: set[str] = set()
        self._pending: list[tuple[str, str, bool]] = []

    def _open_source(self, mix: MixSource) -> _Source:
        cfg = replace(self.cfg, **mix.loader) if mix.loader else self.cfg
        where = mix.build
        if is_url(where):  # a local mirror: tables now, shards when first read
            cache = self.cfg.cache_dir or cache_root() / "loader"
            where = mirror(where, cache)
        urls, build = resolve_source(where)
        card, counts = read_build(build) if build else ({}, {})
        _check_card(card, build, cfg, urls[0])
        _check_task(card, build, cfg)
        return _Source(name=mix.label, urls=urls, keys=shard_keys(urls, build), card=card,
                       counts=counts, cfg=cfg, passes=mix.passes, weight=mix.weight)

    @property
    def num_samples(self) -> int:
        """Samples in one epoch over all ranks (the plan's length)."""
        return int(sum(self._counts))

    def __len__(self) -> int:
        """Samples this rank serves in the current pass (before any skips)."""
        return len(self._rank_positions())

    @property
    def source_counts(self) -> dict[str, int]:
        """Planned samples per source and epoch."""
        return {s.name: c for s, c in zip(self.sources, self._counts, strict=True)}

    @property
    def stats(self) -> Counter:
        """Skipped shards/samples by reason: counted here, plus what workers reported."""
        return self._stats + self._observed

    def set_epoch(self, epoch: int) -> None:
        """Start epoch `epoch` (a new order); forgets any resume position."""
        self.epoch = int(epoch)
        self._consumed = np.zeros(0, dtype=bool)

    # -- the plan ---------------------------------------------------------------------------

    def _plan(self) -> tuple[np.ndarray, ...]:
        """(source, shard, item) per position of the current epoch (`epoch.epoch_plan`)."""
        if self._plan_cache is None or self._plan_cache[0] != self.epoch:
            sources = [PlanSource(tuple(range(s.first_shard, s.first_shard + len(s.urls))),
                                  tuple(map(len, s.keys)), c)
                       for s, c in zip(self.sources, self._counts, strict=True)]
            plan = epoch_plan(sources, seed=self.cfg.seed, epoch=self.epoch,
                              interleave=self.cfg.interleave, shuffle=self.cfg.shuffle)
            self._plan_cache = (self.epoch, plan)
        return self._plan_cache[1]

    def _consumed_mask(self) -> np.ndarray:
        n = len(self._plan()[0])
        if len(self._consumed) != n:
            self._consumed = np.zeros(n, dtype=bool)
        return self._consumed

    def _remaining(self) -> np.ndarray:
        return np.flatnonzero(~self._consumed_mask())

    def _rank_positions(self) -> np.ndarray:
        return split(self._remaining(), world_size=self.world_size, rank=self.rank, workers=1,
                     worker=0, even=self.cfg.even_ranks)

    # -- resume -----------------------------------------------------------------------------

    def _fingerprint(self) -> str:
        parts = [self.cfg.seed, self.cfg.interleave, self.cfg.shuffle,
                 *((s.name, c, [Path(u).name for u in s.urls], list(map(len, s.keys)))
                   for s, c in zip(self.sources, self._counts, strict=True))]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]

    def state_dict(self) -> dict[str, Any]:
        """The epoch's progress (JSON-able): the positions the training loop received.

        Positions come from `observe` (called by `ShardLoader` for each batch it hands out,
        and by in-process iteration itself), so samples prefetched by workers but never
        delivered are not counted and will be served after a restore. With torch.distributed
        initialised, every rank's progress is gathered, so any rank's state restores all.
        """
        state = {"format": _STATE_FORMAT, "epoch": self.epoch, "plan": self._fingerprint(),
                 "world_size": self.world_size, "ranks": [self.rank],
                 "consumed": to_ranges(np.flatnonzero(self._consumed_mask()))}
        if (self.world_size > 1 and torch.distributed.is_available()
                and torch.distributed.is_initialized()):
            states: list[Any] = [None] * self.world_size
            torch.distributed.all_gather_object(states, state)
            state = self.merge_states(states)
        return state

    @staticmethod
    def merge_states(states: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """One state from the states every rank saved (their consumed positions united).

        Raises:
            ValueError: the states belong to different epochs or plans.
        """
        first = states[0]
        for s in states[1:]:
            if (s.get("epoch"), s.get("plan")) != (first.get("epoch"), first.get("plan")):
                raise ValueError("cannot merge loader states of different epochs or plans")
        consumed = np.concatenate([from_ranges(s.get("consumed") or []) for s in states])
        return {**first, "ranks": sorted({r for s in states for r in s.get("ranks") or []}),
                "consumed": to_ranges(consumed)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume mid-epoch with any number of ranks and workers: the next pass yields
        exactly the samples of the epoch not yet delivered (later passes of the same epoch
        start from its beginning again).

        Raises:
            ValueError: an unknown format, another plan (sources, their sizes or repeats,
                seed, shuffle, interleave), or the progress of only some ranks.
        """
        if state.get("format") != _STATE_FORMAT:
            raise ValueError(f"cannot resume: unknown loader state format {state.get('format')!r}"
                             f" (this loader writes {_STATE_FORMAT})")
        self.epoch = int(state.get("epoch", 0))
        if state.get("plan") != self._fingerprint():
            raise ValueError("cannot resume: the state was saved for another plan (sources, "
                             "their shards or sizes, repeats/weights, seed, shuffle or "
                             "interleave differ), so its positions name other samples")
        problem = _rank_consumed_check(state)
        if problem:
            raise ValueError(f"cannot resume: {problem}")
        mask = np.zeros(len(self._plan()[0]), dtype=bool)
        done = from_ranges(state.get("consumed") or [])
        if len(done) and (done.min() < 0 or done.max() >= len(mask)):
            raise ValueError("cannot resume: consumed positions outside the epoch's plan")
        mask[done] = True
        self._consumed = mask

    def observe(self, batch: dict[str, Any]) -> None:
        """Record a batch (or sample) the training loop received: its positions, and the
        skips workers reported with it (counted in `stats` and re-warned here, in the main
        process, where warnings are seen; a shard two workers read is reported once)."""
        progress = batch.get("__progress__")
        if progress is not None:
            positions = [progress] if isinstance(progress, int) else progress.tolist()
            self._consumed_mask()[positions + list(batch.get("__done__") or ())] = True
        for reason, detail, corrupt in batch.get("__skipped__") or ():
            if detail in self._seen_details:
                continue
            self._seen_details.add(detail)
            self._observed[reason] += 1
            if corrupt:
                warnings.warn(f"sa2va_shards loader skipped ({reason}) in a worker: {detail}",
                              CorruptDataWarning, stacklevel=2)

    def _end_pass(self, complete: bool) -> None:
        # an epoch served to its end starts over on the next pass; a state applies once
        if complete:
            self._consumed = np.zeros(0, dtype=bool)
        self._seen_details = set()

    # -- iteration --------------------------------------------------------------------------

    def _count(self, reason: str, detail: str, corrupt: bool = True) -> None:
        if get_worker_info() is None and detail in self._seen_details:
            return
        self._seen_details.add(detail)
        self._stats[reason] += 1
        log.log(logging.WARNING if corrupt else logging.DEBUG, "skipped (%s): %s", reason, detail)
        if get_worker_info() is not None:  # reported with the next batch, see observe
            self._pending.append((reason, detail, corrupt))
        elif corrupt:
            warnings.warn(f"sa2va_shards loader skipped ({reason}): {detail}",
                          CorruptDataWarning, stacklevel=2)

    def _cursor(self, shard: int, source: _Source, manifests: dict,
                scope: list[str]) -> _Cursor:
        url = self.urls[shard]
        wanted = partial(wanted_member, gt_masks=self.cfg.gt_masks)
        fetch = partial(ensure_local, budget=self.cfg.cache_bytes)
        return _Cursor(lambda: TarStream([url], owned={url}, wanted=wanted,
                                         expected=source.counts, strict=self.cfg.strict,
                                         report=self._count, fetch=fetch,
                                         manifests=manifests, scope=scope),
                       source.keys[shard - source.first_shard])

    def _raw_stream(self, positions: np.ndarray) -> Iterator[dict]:
        """The raw samples at `positions`, in order; each shard is streamed once per pass
        through it and closed after its last position here."""
        source, shard, item = (a[positions] for a in self._plan())
        last = {int(g): i for i, g in enumerate(shard)}
        cursors: dict[int, _Cursor] = {}
        # the manifests are read once per pass, for this piece's shards only
        manifests: dict = {}
        scope = [self.urls[g] for g in last]
        for i, (p, s, g, it) in enumerate(zip(positions.tolist(), source.tolist(),
                                              shard.tolist(), item.tolist(), strict=True)):
            cur = cursors.get(g) or cursors.setdefault(
                g, self._cursor(g, self.sources[s], manifests, scope))
            raw = cur.get(it)
            if last[g] == i:
                cursors.pop(g).finish()
            if raw is not None:
                yield {**raw, "__position__": p, "__source__": s}
        for cur in cursors.values():
            cur.close()

    def _decode(self, raw: dict[str, Any]) -> dict[str, Any] | None:
        key, url = str(raw.get("__key__")), str(raw.get("__url__"))
        src = self.sources[raw["__source__"]]
        rng = np.random.default_rng([self.cfg.seed, self.epoch, 2, raw["__position__"]])
        with self._boundary.item(f"{url} sample {key}") as outcome:  # skip, count, warn
            sample = decode_sample(raw, src.cfg, rng, defer=self.defer_images)
            if self.encoder is not None:
                encode_sample(sample, self.encoder, self.cfg.vision)
        if outcome.error is not None:
            e = outcome.error
            self._count(e.code, f"{url} sample {key}: {e.detail}", e.corrupt)
            return None
        sample.update({"__key__": key, "__url__": url, "source": src.name,
                       "gt_packed": self.cfg.gt_format == "packed"})
        return sample

    def __iter__(self) -> Iterator[dict[str, Any]]:
        # Not a generator itself: the positions are taken when the iterator is created (in
        # each worker from its copy of the dataset, or here in-process).
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        positions = split(self._remaining(), world_size=self.world_size, rank=self.rank,
                          workers=workers, worker=worker, even=self.cfg.even_ranks)
        return self._samples(positions, worker, in_process=info is None)

    def _samples(self, positions: np.ndarray, worker: int, *,
                 in_process: bool) -> Iterator[dict[str, Any]]:
        self._pending, done = [], []  # skips to report; positions skipped, for the state
        self._boundary = ErrorBoundary(
            f"worker {worker}", Tolerance(1) if self.cfg.strict else Tolerance(
                self.cfg.max_consecutive_errors, self.cfg.max_consecutive_errors),
            raises=CorruptDataError, hint="is this the build the LoaderConfig expects?")
        raw: Iterator[dict] = self._raw_stream(positions)
        if self.cfg.shuffle:
            rng = np.random.default_rng([self.cfg.seed, self.epoch, 1, int(positions[0])
                                         if len(positions) else 0])
            raw = shuffled(raw, self.cfg.shuffle_buffer, rng)
        for item in raw:
            sample = self._decode(item)
            if sample is None:  # skipped: consumed too, so a resume does not retry it
                done.append(item["__position__"])
                continue
            sample["__progress__"] = item["__position__"]
            if in_process:  # the consumer has it once it is yielded
                self._consumed_mask()[[*done, item["__position__"]]] = True
                done = []
            elif self._pending or done:  # workers report skips through the batches
                sample["__skipped__"], sample["__done__"] = self._pending, done
                self._pending, done = [], []
            yield sample
        if self._pending or done:
            yield {"__skipped__": self._pending, "__done__": done}  # a worker's tail report
        if in_process and done:
            self._consumed_mask()[done] = True
        if in_process:
            self._end_pass(complete=True)


def _as_mixture(source: Any) -> Mixture:
    if isinstance(source, Mixture):
        return source
    if isinstance(source, str | Path) and str(source).endswith((".yaml", ".yml")):
        return load_mixture(source)
    return Mixture(sources=(MixSource(build=source),))


def _check_card(card: dict[str, Any], build: Path | None, cfg: LoaderConfig, first: str) -> None:
    if build is None:
        msg = (f"no {CARD} found next to the shards ({first}): the build's preprocessing "
               "cannot be checked against LoaderConfig")
        if cfg.strict:
            raise ConfigError(msg)
        warnings.warn(msg, UserWarning, stacklevel=4)
        return
    check_preprocessing(card, cfg, where=str(build))


def _check_task(card: dict[str, Any], build: Path | None, cfg: LoaderConfig) -> None:
    served = build_tasks(card) if build else TASKS + OTHER_TASKS
    wanted = TASKS + OTHER_TASKS if cfg.task == "mixed" else (cfg.task,)
    if not set(wanted) & set(served):
        fmt = ((card.get("config") or {}).get("reader") or {}).get("format")
        can = " and ".join(served) or "no task (its objects have no text)"
        raise ConfigError(f"{build}: this {fmt} build serves {can}; LoaderConfig(task="
                          f"{cfg.task!r}) would yield an empty epoch")


class ShardLoader:
    """A DataLoader over a `ShardDataset` that records what the training loop received
    (`state_dict` is exact at batch boundaries) and optionally moves batches to a device.

    With a dataset that has an `encoder`, every batch is Sa2VA's model input dict
    (`sa2va.model_inputs`, on `device` or the CPU); otherwise the light batch of `collate`.
    At the end of each pass, samples skipped for a reason other than corruption (nothing to
    serve, too long) are reported in one `SkippedSamplesWarning`.

    Args:
        dataset: the dataset (its rank/world already set).
        batch_size: samples per batch (collated inside the workers).
        num_workers: DataLoader workers; must match on resume (0 and 1 are the same stream).
        device: if given, batches come out of `to_device(batch, device)`.
        dtype: float dtype of `pixel_values` / `tiles` when `device` is set.
        prefetch_factor: batches prefetched per worker.
    """

    def __init__(self, dataset: ShardDataset, *, batch_size: int, num_workers: int = 2,
                 device: str | torch.device | None = None, dtype: torch.dtype = torch.float32,
                 prefetch_factor: int = 2) -> None:
        self.dataset, self.batch_size, self.num_workers = dataset, batch_size, num_workers
        self.device = torch.device(device) if device is not None else None
        self.dtype, self.prefetch_factor = dtype, prefetch_factor

    def __iter__(self) -> Iterator[dict[str, Any]]:
        # A fresh DataLoader per epoch (no persistent workers): workers get a copy of the
        # dataset with the current epoch and resume positions.
        pin = self.device is not None and self.device.type == "cuda"
        extra = {"prefetch_factor": self.prefetch_factor} if self.num_workers else {}
        encoder = self.dataset.encoder
        collate_fn = collate if encoder is None else partial(collate_sa2va,
                                                              pad_id=encoder.pad_id)
        loader = DataLoader(self.dataset, batch_size=self.batch_size, collate_fn=collate_fn,
                            num_workers=self.num_workers, pin_memory=pin, **extra)
        before = self.dataset.stats.copy()
        cfg = self.dataset.cfg
        self.dataset.defer_images = gpu_decode.wanted(cfg.image_decode, self.device)
        batches = iter(loader)  # workers start here, each with its copy of the resume state
        vision = cfg.vision
        complete = False
        try:
            for batch in batches:
                self.dataset.observe(batch)
                if batch["batch_size"] == 0:
                    continue
                batch = gpu_decode.decode_deferred(batch, self.device or "cpu",
                                                   size=cfg.image_size, tile=vision.image_size)
                if encoder is not None:
                    batch = model_inputs(batch, self.device or "cpu", vision=vision,
                                         dtype=self.dtype)
                elif self.device is not None:
                    batch = to_device(batch, self.device, vision=vision, dtype=self.dtype)
                yield batch
            complete = True
        finally:
            if self.num_workers or complete:
                self.dataset._end_pass(complete)
        self._report(self.dataset.stats - before)

    def __len__(self) -> int:
        """Batches this rank gets in the current pass (before any skips): each worker
        batches its own samples."""
        n, workers = len(self.dataset), max(1, self.num_workers)
        return sum(-(-len(part) // self.batch_size) for part in np.array_split(np.arange(n),
                                                                                workers))

    @staticmethod
    def _report(skipped: Counter) -> None:
        quiet = {r: n for r, n in skipped.items() if r in QUIET_REASONS}
        if quiet:
            counts = ", ".join(f"{r} {n}" for r, n in sorted(quiet.items()))
            warnings.warn(f"sa2va_shards loader: {sum(quiet.values())} intact samples were not "
                          f"served this pass ({counts})", SkippedSamplesWarning, stacklevel=3)

    def set_epoch(self, epoch: int) -> None:
        """See `ShardDataset.set_epoch`."""
        self.dataset.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        """See `ShardDataset.state_dict`."""
        return self.dataset.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """See `ShardDataset.load_state_dict`."""
        self.dataset.load_state_dict(state)
