"""One shard job: load -> transform -> encode -> write one tar. The unit of work, retry and resume.

This is the one catch boundary for per-sample errors: a `SampleError` becomes a reject row with
its reason; any other data-dependent exception becomes `unexpected_error` (too many in a row
abort the shard: that is broken code, not bad data); system exceptions always propagate.
"""

from __future__ import annotations

import logging
import resource
import time
from pathlib import Path

import numpy as np

from sa2va_shards.config import BuildConfig
from sa2va_shards.errors import SYSTEM_EXCEPTIONS, BuildAborted, Level, Reason, SampleError
from sa2va_shards.manifest import save_progress
from sa2va_shards.readers import get_reader
from sa2va_shards.records import ItemRef, RejectRecord, SampleRecord, ShardPlan, ShardResult
from sa2va_shards.schema import content_hash, encode_sample
from sa2va_shards.build.transform import DroppedObject, transform_sample
from sa2va_shards.build.writer import ShardWriter

__all__ = ["process_shard"]

log = logging.getLogger(__name__)


def _reject(item: ItemRef, shard: str, err: SampleError | Exception) -> RejectRecord:
    if isinstance(err, SampleError):
        reason, stage, detail = err.reason.value, err.stage, err.detail
    else:
        reason, stage = Reason.UNEXPECTED.value, "unknown"
        detail = f"{type(err).__name__}: {err}"
    return RejectRecord(source_id=item.source_id, level=Level.SAMPLE.value, object_id="",
                        stage=stage, reason=reason, detail=detail, shard=shard)


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


def _check_failure_runs(failed_run: int, unexpected_run: int, plan: ShardPlan, item: ItemRef,
                        err: Exception, cfg: BuildConfig) -> None:
    last = f"last: {item.source_id}: {err}"
    if unexpected_run >= cfg.shards.max_consecutive_unexpected:
        raise BuildAborted(f"{unexpected_run} consecutive unexpected errors in {plan.name} "
                           f"(a bug, not bad data); {last}") from err
    if failed_run >= cfg.shards.max_consecutive_failures:
        raise BuildAborted(f"{failed_run} consecutive samples failed in {plan.name}: check "
                           f"reader.root and the reader options; {last}") from err


def process_shard(plan: ShardPlan, cfg: BuildConfig, *, build_dir: str) -> ShardResult:
    """Build one shard of `plan.items` into `<build_dir>/shards/<plan.name>`.

    Returns:
        The shard's record, one record per written sample, and one reject row per rejected
        sample or dropped object. Also saved as a progress sidecar for resume.

    Raises:
        BuildAborted: after `shards.max_consecutive_failures` rejected samples or
            `shards.max_consecutive_unexpected` non-data errors in a row.
    """
    start = time.perf_counter()
    reader = get_reader(cfg.reader, max_pixels=cfg.image.max_pixels)
    samples, rejects = [], []
    failed_run = unexpected_run = 0  # consecutive failures: any reason / unexpected errors
    with ShardWriter(Path(build_dir) / "shards" / plan.name) as writer:
        for item in plan.items:
            try:
                sample, dropped = transform_sample(reader.load(item), cfg)
                members = encode_sample(sample)
                writer.write(sample.key, members)
            except SYSTEM_EXCEPTIONS:
                raise
            except Exception as e:  # noqa: BLE001 - the per-sample boundary, see module doc
                rejects.append(_reject(item, plan.name, e))
                failed_run += 1
                unexpected_run = 0 if isinstance(e, SampleError) else unexpected_run + 1
                if unexpected_run:
                    log.warning("unexpected error on %s in %s: %r", item.source_id, plan.name, e)
                _check_failure_runs(failed_run, unexpected_run, plan, item, e, cfg)
                continue
            failed_run = unexpected_run = 0
            samples.append(_sample_record(plan.name, item, sample, members))
            rejects.extend(_object_rejects(item, plan.name, dropped))
    result = ShardResult(
        shard=writer.record, samples=samples, rejects=rejects, read=len(plan.items),
        seconds=time.perf_counter() - start,
        max_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    save_progress(Path(build_dir), result)
    return result
