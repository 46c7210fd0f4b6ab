"""Streaming loader over a build's shards: split, shuffle, resume, skip bad data.

Order of one epoch, for one rank and DataLoader worker (a *slot*; slot = rank * workers + id):

1. The shard list is permuted with (seed, epoch).
2. Split: with at least as many shards as slots (world_size * workers), slot s reads shards
   s, s + slots, s + 2 slots, ... of the permuted list. With fewer shards than slots, every slot
   reads every shard and keeps raw samples s, s + slots, ... of the concatenated stream
   (sample-level striding: tiny builds still use every worker, at the cost of each slot
   reading all bytes, which is small by definition). Either way each sample lands in exactly
   one slot.
3. A shuffle buffer seeded with (seed, epoch, slot) reorders the slot's raw (undecoded) samples.
4. Samples are decoded (`samples.decode_sample`, per-sample choices seeded with
   (seed, epoch, key)); a sample that fails is skipped, counted and warned about.

So a slot's stream is a pure function of (shards, seed, epoch, world size, workers). Every
sample carries `__progress__` = (worker, workers, position in its slot's stream); the consumer
(`ShardDataset.observe`, called by `ShardLoader` for every batch the training loop receives)
keeps the next position per worker, and that small dict is the resume state: a restored
dataset replays each slot's raw stream (bytes only, nothing decoded) up to its position.

Training loop (one process per rank; the state is per rank)::

    ds = ShardDataset(build_dir, LoaderConfig(task="mixed", max_objects=5), rank=r, world_size=w)
    loader = ShardLoader(ds, batch_size=8, num_workers=4, device="cuda")
    if ckpt:                                  # same seed, shards, world size and workers
        loader.load_state_dict(ckpt["loader"])
    for epoch in range(ds.epoch, epochs):
        if epoch != ds.epoch:
            loader.set_epoch(epoch)           # new order; drops the resume position
        for batch in loader:                  # resumes mid-epoch after load_state_dict
            step(batch)
            if time_to_save:
                save({"model": ..., "loader": loader.state_dict()})   # JSON-able dict

Ranks may get a few samples more or fewer than each other (whole shards, or a stride, per
slot); no sample is dropped or repeated, so a DDP loop should stop the epoch together (e.g.
`torch.distributed.algorithms.Join`, or a fixed step count) rather than assume equal lengths.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from sa2va_shards.config import VisionConfig
from sa2va_shards.device import collate, to_device
from sa2va_shards.encode import EncodeError, Encoder
from sa2va_shards.errors import SYSTEM_EXCEPTIONS, ConfigError
from sa2va_shards.manifest import CARD
from sa2va_shards.sa2va import collate_sa2va, encode_sample, model_inputs
from sa2va_shards.samples import (
    TASKS,
    LoadError,
    Wording,
    build_tasks,
    decode_sample,
    wanted_member,
)
from sa2va_shards.schema import SCHEMA_VERSION
from sa2va_shards.tar_stream import (
    CorruptDataError,
    CorruptDataWarning,
    TarStream,
    read_build,
    resolve_source,
    shuffled,
)

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

Task = Literal["mask_to_caption", "caption_to_mask", "mixed"]
GtMasks = Literal["none", "1024", "full", "both"]
_STATE_FORMAT = 1
#: skip reasons that are a policy, not corruption (reported once per pass, never raised).
QUIET_REASONS = frozenset({"no_usable_objects", "task_not_served", "too_long"})


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
    pooling: str = "torch_nearest_legacy"
    #: shard schema version the loader reads.
    schema_version: int = SCHEMA_VERSION
    #: mask -> caption (region captioning), caption -> mask (referring segmentation), or a
    #: seeded 50/50 choice per sample and epoch.
    task: Task = "mask_to_caption"
    #: GT masks to ship: none, the 1024 masks, full resolution, or both.
    gt_masks: GtMasks = "1024"
    #: 'packed' bits (8x smaller between processes; `to_device` unpacks) or dense uint8.
    gt_format: Literal["packed", "dense"] = "packed"
    #: at most this many objects per sample per step (seeded), None for all.
    max_objects: int | None = None
    #: region captioning only: 'drop' objects with K = 0 (no visual-prompt token), or 'keep'.
    k_zero: Literal["keep", "drop"] = "drop"
    #: InternVL dynamic tiles up to this many (+ thumbnail); 0 or 1 = the 448 thumbnail only.
    max_tiles: int = 0
    #: seed of every random choice (shard order, buffer, objects, questions).
    seed: int = 0
    #: shuffle shards and samples; False keeps build order (within the split).
    shuffle: bool = True
    #: raw samples held for shuffling per worker (~150-400 KB each).
    shuffle_buffer: int = 256
    #: raise `CorruptDataError` on a bad shard or sample instead of skipping it.
    strict: bool = False
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
        if self.task not in ("mask_to_caption", "caption_to_mask", "mixed"):
            raise ValueError(f"task {self.task!r}: mask_to_caption, caption_to_mask or mixed")
        if self.gt_masks not in ("none", "1024", "full", "both"):
            raise ValueError(f"gt_masks {self.gt_masks!r}: none, 1024, full or both")
        if self.gt_format not in ("packed", "dense") or self.k_zero not in ("keep", "drop"):
            raise ValueError(f"gt_format {self.gt_format!r} / k_zero {self.k_zero!r} invalid")
        if self.task != "mask_to_caption" and self.gt_masks == "none":
            raise ValueError(f"task {self.task!r} needs GT masks as targets; set gt_masks")
        if self.max_objects is not None and self.max_objects < 1:
            raise ValueError(f"max_objects must be >= 1 or None, got {self.max_objects}")
        if self.max_tiles < 0 or self.shuffle_buffer < 0 or self.video_targets < 0:
            raise ValueError("max_tiles, shuffle_buffer and video_targets must be >= 0")
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


def _key_int(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


class ShardDataset(IterableDataset):
    """Iterable over a build's samples; see the module docstring for order and resume.

    Args:
        source: a build directory (dataset.json + shards.parquet), a folder of .tar shards,
            a brace pattern, or a list of shard paths/URLs.
        cfg: what to serve and what the build must match.
        rank, world_size: this process's place among data-parallel ranks; default from
            torch.distributed when initialised, else 0 and 1.
        encoder: tokenizes each sample's conversation (`encode.Encoder`); with it, samples
            carry `input_ids` / `labels` and `ShardLoader` yields Sa2VA's model input dict
            (`sa2va.model_inputs`). Needs full-resolution GT masks (`gt_masks='full'`).

    Raises:
        ConfigError: the build's preprocessing does not match `cfg`, the build cannot serve
            `cfg.task`, or no dataset.json was found and `cfg.strict`.
    """

    def __init__(self, source: str | Path | Sequence[str | Path],
                 cfg: LoaderConfig | None = None, *, rank: int | None = None,
                 world_size: int | None = None, encoder: Encoder | None = None) -> None:
        super().__init__()
        self.cfg = cfg or LoaderConfig()
        self.encoder = encoder
        if encoder is not None and self.cfg.gt_masks not in ("full", "both"):
            raise ConfigError("a Sa2VA batch (encoder=...) carries full-resolution masks: "
                              "use LoaderConfig(gt_masks='full')")
        self.urls, build = resolve_source(source)
        self.card, self.shard_counts = read_build(build) if build else ({}, {})
        self._check_card(build)
        self._check_task(build)
        self.rank, self.world_size = _dist(rank, world_size)
        self.epoch = 0
        self._start: dict[int, int] = {}
        self._start_workers: int | None = None
        self._delivered: dict[int, int] = {}
        self._num_workers: int | None = None
        self._stats: Counter = Counter()
        self._observed: Counter = Counter()
        self._pending: list[tuple[str, str, bool]] = []

    def _check_card(self, build: Path | None) -> None:
        if build is None:
            msg = (f"no {CARD} found next to the shards ({self.urls[0]}): the build's "
                   "preprocessing cannot be checked against LoaderConfig")
            if self.cfg.strict:
                raise ConfigError(msg)
            warnings.warn(msg, UserWarning, stacklevel=3)
            return
        check_preprocessing(self.card, self.cfg, where=str(build))

    def _check_task(self, build: Path | None) -> None:
        served = build_tasks(self.card) if build else TASKS
        wanted = TASKS if self.cfg.task == "mixed" else (self.cfg.task,)
        if not set(wanted) & set(served):
            fmt = ((self.card.get("config") or {}).get("reader") or {}).get("format")
            can = " and ".join(served) or "no task (its objects have no text)"
            raise ConfigError(f"{build}: this {fmt} build serves {can}; LoaderConfig(task="
                              f"{self.cfg.task!r}) would yield an empty epoch")

    @property
    def num_samples(self) -> int | None:
        """Samples in one epoch over all ranks, from shards.parquet (None if unknown)."""
        names = [Path(u).name for u in self.urls]
        if not self.shard_counts or any(n not in self.shard_counts for n in names):
            return None
        return sum(self.shard_counts[n] for n in names)

    @property
    def stats(self) -> Counter:
        """Skipped shards/samples by reason: counted here, plus what workers reported."""
        return self._stats + self._observed

    def set_epoch(self, epoch: int) -> None:
        """Start epoch `epoch` (a new order); forgets any resume position."""
        self.epoch = int(epoch)
        self._start, self._delivered, self._start_workers = {}, {}, None

    # -- resume -----------------------------------------------------------------------------

    def _layout(self) -> dict[str, Any]:
        names = "\n".join(Path(u).name for u in self.urls).encode()
        return {"seed": self.cfg.seed, "rank": self.rank, "world_size": self.world_size,
                "shuffle": self.cfg.shuffle, "shuffle_buffer": self.cfg.shuffle_buffer,
                "shards": hashlib.sha256(names).hexdigest()[:16]}

    def state_dict(self) -> dict[str, Any]:
        """This rank's progress in the current epoch (JSON-able): what the consumer received.

        Positions come from `observe` (called by `ShardLoader` for each batch it hands out,
        and by in-process iteration itself), so samples prefetched by workers but never
        delivered are not counted and will be served after a restore.
        """
        positions = {**self._start, **self._delivered}
        return {"format": _STATE_FORMAT, "epoch": self.epoch, **self._layout(),
                "num_workers": self._num_workers or self._start_workers,
                "positions": {str(w): int(p) for w, p in sorted(positions.items())}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume mid-epoch: the next pass yields exactly the samples not yet delivered (later
        passes of the same epoch start from its beginning again).

        Raises:
            ValueError: the state comes from another seed, shard list, rank layout or
                shuffle setting (the replayed order would differ).
        """
        if state.get("format") != _STATE_FORMAT:
            raise ValueError(f"unknown loader state format {state.get('format')!r}")
        mine = self._layout()
        diffs = [f"{k}: saved {state.get(k)!r}, now {v!r}" for k, v in mine.items()
                 if state.get(k) != v]
        if diffs:
            raise ValueError("cannot resume: " + "; ".join(diffs))
        self.epoch = int(state["epoch"])
        self._start = {int(w): int(p) for w, p in state["positions"].items()}
        self._delivered = dict(self._start)
        self._start_workers = state.get("num_workers")
        self._num_workers = None

    def observe(self, batch: dict[str, Any]) -> None:
        """Record a batch (or sample) the training loop received: its progress, and the skips
        workers reported with it (counted in `stats` and re-warned here, in the main process,
        where warnings are seen)."""
        progress = batch.get("__progress__")
        rows = [progress] if isinstance(progress, tuple) else (
            progress.tolist() if progress is not None else [])
        for worker, num_workers, pos in rows:
            self._num_workers = int(num_workers)
            self._delivered[int(worker)] = max(self._delivered.get(int(worker), 0), int(pos) + 1)
        for reason, detail, corrupt in batch.get("__skipped__") or ():
            self._observed[reason] += 1
            if corrupt:
                warnings.warn(f"sa2va_shards loader skipped ({reason}) in a worker: {detail}",
                              CorruptDataWarning, stacklevel=2)

    # -- iteration --------------------------------------------------------------------------

    def _count(self, reason: str, detail: str, corrupt: bool = True) -> None:
        self._stats[reason] += 1
        log.log(logging.WARNING if corrupt else logging.DEBUG, "skipped (%s): %s", reason, detail)
        if get_worker_info() is not None:  # reported with the next batch, see observe
            self._pending.append((reason, detail, corrupt))
        elif corrupt:
            warnings.warn(f"sa2va_shards loader skipped ({reason}): {detail}",
                          CorruptDataWarning, stacklevel=2)

    def _tar_stream(self, urls: list[str], owned: set[str]) -> TarStream:
        gt = self.cfg.gt_masks
        return TarStream(urls, owned=owned, wanted=partial(wanted_member, gt_masks=gt),
                         expected=self.shard_counts, strict=self.cfg.strict, report=self._count)

    def _slot_stream(self, worker: int, num_workers: int) -> Iterator[dict]:
        """This slot's raw samples for the epoch, in their final order (module docstring)."""
        slots, slot = self.world_size * num_workers, self.rank * num_workers + worker
        order = np.arange(len(self.urls))
        if self.cfg.shuffle:
            order = np.random.default_rng([self.cfg.seed, self.epoch, 0]).permutation(order)
        urls = [self.urls[i] for i in order]
        if len(urls) >= slots:  # shard-level split
            mine = urls[slot::slots]
            raw: Iterator[dict] = iter(self._tar_stream(mine, set(mine)))
        else:  # sample-level striding: every slot reads all shards, keeps every slots-th
            stream = self._tar_stream(urls, set(urls[slot::slots]))
            raw = (s for i, s in enumerate(stream) if i % slots == slot)
        if self.cfg.shuffle:
            rng = np.random.default_rng([self.cfg.seed, self.epoch, 1, slot])
            raw = shuffled(raw, self.cfg.shuffle_buffer, rng)
        return raw

    def _decode(self, raw: dict[str, Any]) -> dict[str, Any] | None:
        key, url = str(raw.get("__key__")), str(raw.get("__url__"))
        rng = np.random.default_rng([self.cfg.seed, self.epoch, 2, _key_int(key)])
        try:
            sample = decode_sample(raw, self.cfg, rng)
            if self.encoder is not None:
                encode_sample(sample, self.encoder, self.cfg.vision)
        except EncodeError as e:  # intact, but longer than max_length allows
            self._count(e.reason, f"{url} sample {key}: {e.detail}", corrupt=False)
            return None
        except SYSTEM_EXCEPTIONS:
            raise
        except Exception as e:  # noqa: BLE001 - the per-sample boundary: skip, count, warn
            known = isinstance(e, LoadError)
            reason = e.reason if known else "unexpected_error"
            detail = e.detail if known else f"{type(e).__name__}: {e}"
            corrupt = e.corrupt if known else True
            if self.cfg.strict and corrupt:
                raise CorruptDataError(f"{reason}: {url} sample {key}: {detail}") from e
            self._count(reason, f"{url} sample {key}: {detail}", corrupt)
            return None
        sample.update({"__key__": key, "__url__": url,
                       "gt_packed": self.cfg.gt_format == "packed"})
        return sample

    def _begin_pass(self) -> None:
        # A loaded state applies to one pass: it starts there, later passes start at 0.
        self._delivered, self._start = dict(self._start), {}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        # Not a generator itself: the resume position is taken when the iterator is created
        # (in each worker from its copy of the dataset, or here in-process).
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        if self._start and self._start_workers not in (None, num_workers):
            raise ValueError(f"resume state was saved with {self._start_workers} DataLoader "
                             f"workers per rank (0 counts as 1); this loader has {num_workers}: "
                             "the per-worker streams differ, so positions do not carry over")
        skip = self._start.get(worker, 0)
        if info is None:
            self._begin_pass()
        return self._samples(worker, num_workers, skip, in_process=info is None)

    def _samples(self, worker: int, num_workers: int, skip: int, *,
                 in_process: bool) -> Iterator[dict[str, Any]]:
        self._pending = []
        for pos, raw in enumerate(self._slot_stream(worker, num_workers)):
            if pos < skip:
                continue  # replay: raw bytes only, nothing decoded
            sample = self._decode(raw)
            if sample is None:
                continue
            sample["__progress__"] = (worker, num_workers, pos)
            if in_process:  # the consumer has it once it is yielded
                self._delivered[worker], self._num_workers = pos + 1, num_workers
            elif self._pending:  # workers report their skips through the batches
                sample["__skipped__"], self._pending = self._pending, []
            yield sample
        if self._pending:
            yield {"__skipped__": self._pending}  # a worker's tail report, see collate


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
        batches = iter(loader)  # workers start here, each with its copy of the resume state
        if self.num_workers:
            self.dataset._begin_pass()
        vision = self.dataset.cfg.vision
        for batch in batches:
            self.dataset.observe(batch)
            if batch["batch_size"] == 0:
                continue
            if encoder is not None:
                batch = model_inputs(batch, self.device or "cpu", vision=vision,
                                     dtype=self.dtype)
            elif self.device is not None:
                batch = to_device(batch, self.device, vision=vision, dtype=self.dtype)
            yield batch
        self._report(self.dataset.stats - before)

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
