"""A build: plan -> skip verified shards -> run the rest -> write tables -> dataset.json last."""

from __future__ import annotations

import logging
import platform
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from pipeline.runners import run_ray, run_serial
from sa2va_shards import __version__
from sa2va_shards.config import BuildConfig
from sa2va_shards.manifest import (
    CARD,
    PROGRESS_DIR,
    count_summary,
    input_fingerprint,
    load_progress,
    read_card,
    version_id,
    write_card,
    write_tables,
)
from sa2va_shards.plan import plan_shards
from sa2va_shards.readers import get_reader
from sa2va_shards.records import ShardResult
from sa2va_shards.schema import SCHEMA_VERSION
from sa2va_shards.shard import process_shard
from sa2va_shards.versions import read_latest, set_latest

__all__ = ["BuildResult", "run_build"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class BuildResult:
    """Where a build went and what it counted."""

    build_dir: Path
    version: str
    counts: dict
    #: True when the version already existed and nothing was built.
    reused: bool = False
    #: shards skipped because a previous (crashed) run had finished them.
    resumed_shards: int = 0
    timings: dict = field(default_factory=dict)


def _clean_partial(build_dir: Path) -> None:
    for tmp in (build_dir / "shards").glob("*.tmp"):
        tmp.unlink()


def _check_counts(counts: dict) -> None:
    if counts["read"] != counts["written"] + counts["rejected"]:
        raise RuntimeError(f"accounting broken: read {counts['read']} != written "
                           f"{counts['written']} + rejected {counts['rejected']}")


def run_build(cfg: BuildConfig, *, address: str | None = None, num_cpus: int | None = None,
              runner: str = "ray", resume: bool = True, progress: bool = True,
              cpus_per_task: float = 1.0) -> BuildResult:
    """Build (or resume, or reuse) the version of `cfg` under `<cfg.out>/<cfg.dataset>/`.

    Args:
        address: Ray cluster address; None starts (or reuses) a local Ray.
        num_cpus: CPUs for a local Ray.
        runner: 'ray' or 'serial' (same output, in-process, for debugging).
        resume: keep shards a previous run finished (verified by sha256).
        cpus_per_task: Ray CPUs per shard task (fewer: more concurrent tasks).
    """
    t0 = time.perf_counter()
    items = get_reader(cfg.reader).list_items()
    fingerprint = input_fingerprint(items)
    version = version_id(cfg, fingerprint)
    build_dir = Path(cfg.out) / cfg.dataset / version
    if (build_dir / CARD).exists():
        return BuildResult(build_dir=build_dir, version=version, reused=True,
                           counts=read_card(build_dir)["counts"])
    t_index = time.perf_counter() - t0
    plans, plan_rejects = plan_shards(items, dataset=cfg.dataset,
                                      samples_per_shard=cfg.shards.samples_per_shard)
    del items  # the plans hold what the tasks need
    (build_dir / "shards").mkdir(parents=True, exist_ok=True)
    _clean_partial(build_dir)
    done = {p.name: r for p in plans if resume and (r := load_progress(build_dir, p.name))}
    todo = [p for p in plans if p.name not in done]
    run = run_ray if runner == "ray" else run_serial
    opts = ({"address": address, "num_cpus": num_cpus, "cpus_per_task": cpus_per_task}
            if runner == "ray" else {})
    results: list[ShardResult] = list(done.values())
    results += run(process_shard, todo, progress=progress, cfg=cfg, build_dir=str(build_dir),
                   **opts)
    t_shards = time.perf_counter() - t0 - t_index
    counts = count_summary(results, plan_rejects)
    _check_counts(counts)
    write_tables(build_dir, results, plan_rejects)
    timings = {"index_s": round(t_index, 3), "shards_s": round(t_shards, 3),
               "total_s": round(time.perf_counter() - t0, 3),
               "samples_per_s": round(counts["read"] / max(t_shards, 1e-9), 2),
               "max_worker_rss_mb": round(max((r.max_rss_mb for r in results), default=0), 1)}
    parent = read_latest(build_dir.parent)
    write_card(build_dir, _card(cfg, version, fingerprint, counts, timings, runner, len(done),
                                parent))
    set_latest(build_dir.parent, version)  # only now: the build is complete
    shutil.rmtree(build_dir / PROGRESS_DIR, ignore_errors=True)
    return BuildResult(build_dir=build_dir, version=version, counts=counts,
                       resumed_shards=len(done), timings=timings)


def _card(cfg: BuildConfig, version: str, fingerprint: str, counts: dict, timings: dict,
          runner: str, resumed: int, parent: str | None) -> dict:
    return {
        "dataset": cfg.dataset,
        "version": version,
        "parent": parent,
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
        "code_version": __version__,
        "config": cfg.to_dict(),
        "input_fingerprint": fingerprint,
        "preprocessing": {
            "image_size": cfg.image.size,
            "grid": cfg.vision.grid,
            "tokens_per_image": cfg.vision.tokens_per_image,
            "vision": {"image_size": cfg.vision.image_size, "patch_size": cfg.vision.patch_size,
                       "downsample_ratio": cfg.vision.downsample_ratio},
            "pooling": "torch_nearest_legacy",
            "interpolation": cfg.image.interpolation,
            "k_zero": cfg.masks.k_zero,
        },
        "counts": counts,
        "build": {"runner": runner, "resumed_shards": resumed, "timings": timings,
                  "python": platform.python_version()},
    }
