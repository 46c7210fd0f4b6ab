"""One shard job: load -> transform -> encode -> write one tar. The unit of work, retry and resume.

Each input runs inside the `ErrorBoundary` (errors.py): a `SampleError` becomes a reject row
with its reason, any other data-dependent exception `unexpected_error`; too many failures in a
row abort the shard (`shards.max_consecutive_*`: a wrong setup or broken code, not bad data);
system exceptions always propagate.
"""

from __future__ import annotations

import logging
import resource
import time

import numpy as np

from sa2va_shards.build.inputs import staged_root
from sa2va_shards.build.remote import finish_shard, shard_file
from sa2va_shards.build.transform import DroppedObject, transform_sample
from sa2va_shards.build.writer import ShardWriter
from sa2va_shards.config import BuildConfig
from sa2va_shards.errors import ErrorBoundary, Level, SampleError, Tolerance
from sa2va_shards.format import content_hash, encode_sample
from sa2va_shards.readers import get_reader
from sa2va_shards.records import ItemRef, RejectRecord, SampleRecord, ShardPlan, ShardResult

__all__ = ["process_shard"]

log = logging.getLogger(__name__)


def _reject(item: ItemRef, shard: str, err: SampleError) -> RejectRecord:
    return RejectRecord(source_id=item.source_id, level=Level.SAMPLE.value, object_id="",
                        stage=err.stage, reason=err.code, detail=err.detail, shard=shard)


def _object_rejects(item: ItemRef, shard: str, dropped: list[DroppedObject]) -> list[RejectRecord]:
    return [RejectRecord(source_id=item.source_id, level=Level.OBJECT.value,
                         object_id=d.object_id, stage="transform", reason=d.reason.value,
                         detail=d.detail, shard=shard) for d in dropped]


def _sample_record(shard: str, item: ItemRef, sample, members: dict[str, bytes]) -> SampleRecord:
    k_all = np.asarray(sample.k)
    # video: an object's K is its best frame (it is absent, K = 0, from some frames)
    k = [int(v) for v in (k_all.max(axis=0) if k_all.ndim == 2 else k_all)]
    return SampleRecord(key=sample.key, shard=shard, source_id=item.source_id, n_obj=len(k), k=k,
                        k_zero=sum(v == 0 for v in k), height=sample.meta["height"],
                        width=sample.meta["width"], sha256=content_hash(members),
                        frames=k_all.shape[0] if k_all.ndim == 2 else 1)


def _boundary(plan: ShardPlan, cfg: BuildConfig) -> ErrorBoundary:
    return ErrorBoundary(plan.name, Tolerance(cfg.shards.max_consecutive_failures,
                                              cfg.shards.max_consecutive_unexpected),
                         hint="check reader.root and the reader options")


def process_shard(plan: ShardPlan, cfg: BuildConfig, *, build_dir: str) -> ShardResult:
    """Build one shard of `plan.items` into `<build_dir>/shards/<plan.name>` (`build_dir`: the
    version folder, a local path or a store URL, `build/remote.py`).

    Returns:
        The shard's record, one record per written sample, and one reject row per rejected
        sample or dropped object. Also saved as a progress sidecar for resume.

    Raises:
        BuildAborted: after `shards.max_consecutive_failures` rejected samples or
            `shards.max_consecutive_unexpected` non-data errors in a row.
    """
    # a root on a store: this job's files, staged in a folder of its own while it runs
    with staged_root(cfg, plan.items) as local:
        return _write_shard(plan, local, build_dir=build_dir)


def _write_shard(plan: ShardPlan, cfg: BuildConfig, *, build_dir: str) -> ShardResult:
    start = time.perf_counter()
    reader = get_reader(cfg.reader, max_pixels=cfg.image.max_pixels)
    samples, rejects = [], []
    boundary = _boundary(plan, cfg)
    with shard_file(build_dir, plan.name) as path:
        with ShardWriter(path) as writer:
            for item in plan.items:
                with boundary.item(item.source_id) as outcome:
                    sample, dropped = transform_sample(reader.load(item), cfg)
                    members = encode_sample(sample)
                    writer.write(sample.key, members)
                if outcome.error is not None:
                    rejects.append(_reject(item, plan.name, outcome.error))
                    if boundary.unexpected_run:
                        log.warning("unexpected error on %s in %s: %s", item.source_id,
                                    plan.name, outcome.error.detail)
                    continue
                samples.append(_sample_record(plan.name, item, sample, members))
                rejects.extend(_object_rejects(item, plan.name, dropped))
        result = ShardResult(
            shard=writer.record, samples=samples, rejects=rejects, read=len(plan.items),
            seconds=time.perf_counter() - start,
            max_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        finish_shard(build_dir, path, result)
    return result
