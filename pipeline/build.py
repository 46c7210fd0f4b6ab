"""A build: plan -> skip verified shards -> run the rest -> write tables -> dataset.json last."""

from __future__ import annotations

import contextlib
import fcntl
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
from sa2va_shards.errors import ConfigError
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
from sa2va_shards.records import RejectRecord, ShardPlan, ShardResult
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


#: present from just before dataset.json is written until `latest` has moved: a rerun that
#: finds it next to a card finishes the commit instead of saying "nothing to do".
COMMITTING = ".committing"


@contextlib.contextmanager
def _build_lock(build_dir: Path):
    """An exclusive, non-blocking lock on the version folder, released by the kernel when the
    process dies (no stale locks). Needs a file system with working flock (local disks, most
    NFSv4 setups)."""
    build_dir.parent.mkdir(parents=True, exist_ok=True)
    # next to the version folder, so a published version holds no lock file
    with open(build_dir.parent / f".{build_dir.name}.lock", "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"{build_dir}: another build of this version is running "
                              "(its lock is held); wait for it, then rerun") from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _finish_commit(build_dir: Path, version: str) -> None:
    """The last steps of a commit, safe to repeat: move `latest`, drop the sidecars."""
    set_latest(build_dir.parent, version)
    shutil.rmtree(build_dir / PROGRESS_DIR, ignore_errors=True)
    (build_dir / COMMITTING).unlink(missing_ok=True)


def _check_out(out: str) -> None:
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"out: {out} exists and is not a folder")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"out: {parent} (in {out}) is not a folder")


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
    _check_out(cfg.out)
    items = get_reader(cfg.reader).list_items()
    fingerprint = input_fingerprint(items)
    version = version_id(cfg, fingerprint)
    build_dir = Path(cfg.out) / cfg.dataset / version
    t_index = time.perf_counter() - t0
    plans, plan_rejects = plan_shards(items, dataset=cfg.dataset,
                                      samples_per_shard=cfg.shards.samples_per_shard)
    del items  # the plans hold what the tasks need
    try:
        with _build_lock(build_dir):
            return _build_locked(cfg, plans, plan_rejects, fingerprint, version, build_dir,
                                 t0, t_index, runner=runner, resume=resume, progress=progress,
                                 opts=({"address": address, "num_cpus": num_cpus,
                                        "cpus_per_task": cpus_per_task}
                                       if runner == "ray" else {}))
    except (FileExistsError, NotADirectoryError, PermissionError) as e:
        raise ConfigError(f"out: cannot write {build_dir}: {type(e).__name__}: {e}") from e


def _build_locked(cfg: BuildConfig, plans: list[ShardPlan], plan_rejects: list[RejectRecord],
                  fingerprint: str, version: str, build_dir: Path, t0: float, t_index: float,
                  *, runner: str, resume: bool, progress: bool, opts: dict) -> BuildResult:
    if (build_dir / CARD).exists():
        if (build_dir / COMMITTING).exists():  # crashed after the card, before `latest`
            _finish_commit(build_dir, version)
        return BuildResult(build_dir=build_dir, version=version, reused=True,
                           counts=read_card(build_dir)["counts"])
    (build_dir / "shards").mkdir(parents=True, exist_ok=True)
    _clean_partial(build_dir)
    done = {p.name: r for p in plans if resume and (r := load_progress(build_dir, p.name))}
    todo = [p for p in plans if p.name not in done]
    run = run_ray if runner == "ray" else run_serial
    results: list[ShardResult] = list(done.values())
    results += run(process_shard, todo, progress=progress, cfg=cfg, build_dir=str(build_dir),
                   **opts)
    t_shards = time.perf_counter() - t0 - t_index
    counts = count_summary(results, plan_rejects)
    _check_counts(counts)
    manifests = write_tables(build_dir, results, plan_rejects)
    timings = {"index_s": round(t_index, 3), "shards_s": round(t_shards, 3),
               "total_s": round(time.perf_counter() - t0, 3),
               "samples_per_s": round(counts["read"] / max(t_shards, 1e-9), 2),
               "max_worker_rss_mb": round(max((r.max_rss_mb for r in results), default=0), 1)}
    parent = read_latest(build_dir.parent)
    card = _card(cfg, version, fingerprint, counts, timings, runner, len(done), parent)
    (build_dir / COMMITTING).touch()
    write_card(build_dir, {**card, "manifests": manifests})
    _finish_commit(build_dir, version)  # only now: the build is complete
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
