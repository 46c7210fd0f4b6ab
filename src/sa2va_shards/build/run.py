"""The build's commit protocol, in one place: index -> version id -> plan -> skip shards a
crashed run finished -> link shards the store holds with the same recipe -> run the rest on a
runner (each finished shard joins the store) -> tables -> card (`dataset.json`) -> `latest`.

The runner (in-process, Ray, or any `runners.Runner`) only runs `shard_fn` over the plans; it
decides no bytes and commits nothing."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from sa2va_shards import __version__
from sa2va_shards.build.inputs import reader_and_inputs
from sa2va_shards.build.plan import plan_shards
from sa2va_shards.build.progress import BuildProgress
from sa2va_shards.build.provenance import code_fingerprint, code_id, shard_keys
from sa2va_shards.build.runners import Runner, make_runner, ray_available
from sa2va_shards.build.shard import process_shard
from sa2va_shards.build.store import STORE, ShardStore, store_lock
from sa2va_shards.config import BuildConfig, build_location, is_url
from sa2va_shards.errors import BuildAborted, ConfigError
from sa2va_shards.format import SCHEMA_VERSION, preprocessing_block
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
from sa2va_shards.records import RejectRecord, ShardPlan, ShardResult
from sa2va_shards.versions import derive_parent, set_latest

__all__ = ["AUTO_SERIAL_MAX_INPUTS", "BuildResult", "run_build"]

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
    #: shards linked from the store (same recipe in an earlier build), not computed.
    reused_shards: int = 0
    #: shards computed by this run.
    built_shards: int = 0
    timings: dict = field(default_factory=dict)
    #: 'serial' or 'ray': what ran the shards ('auto' resolved).
    runner: str = ""
    #: `--limit`: a partial build of the first `limit` inputs (never `latest`); None: full.
    limit: int | None = None


#: `runner="auto"` builds in-process when the shards still to build hold at most this many
#: inputs (or are one shard): Ray's fixed cost (~8-10 s: start-up, torch imported per worker)
#: outweighs its speed-up below this (docs/benchmarks.md: 46 inputs 1.0 s serial vs 7.7 s on
#: a 2-CPU Ray, 400: 8.0 vs 16.0 s; break-even ~800-1600 inputs on 2 cores, ~300 on 16).
AUTO_SERIAL_MAX_INPUTS = 500


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


def _finish_commit(build_dir: Path, version: str, *, partial: bool = False) -> None:
    """The last steps of a commit, safe to repeat: move `latest` (never to a partial build),
    drop the sidecars."""
    if not partial:
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


def _apply_limit(items: list, limit: int | None) -> tuple[list, dict | None]:
    """The first `limit` inputs in source-id order, and the card's note of it (None: all
    inputs are used, which is a full build whatever `limit` said)."""
    if limit is None or limit >= len(items):
        return items, None
    if limit < 1:
        raise ConfigError(f"--limit: {limit} must be >= 1")
    return items[:limit], {"limit": limit, "inputs_available": len(items)}


def _pick_runner(runner: str | Runner, address: str | None, plans: list[ShardPlan],
                 *, num_cpus: int | None = None, cpus_per_task: float = 1.0) -> Runner:
    """A `Runner` as given, or by name. 'auto': Ray for a cluster or real work, in-process when
    Ray's start-up would dominate (or Ray is not installed). Only where shards run changes,
    never their bytes (serial == Ray, tested)."""
    if not isinstance(runner, str):
        return runner
    if runner == "auto":
        inputs = sum(len(p.items) for p in plans)
        small = len(plans) <= 1 or inputs <= AUTO_SERIAL_MAX_INPUTS
        runner = "serial" if address is None and (small or not ray_available()) else "ray"
        log.info("runner: %s (auto: %d inputs to build in %d shards; serial up to %d or one "
                 "shard, unless --address)", runner, inputs, len(plans), AUTO_SERIAL_MAX_INPUTS)
    return make_runner(runner, address=address, num_cpus=num_cpus, cpus_per_task=cpus_per_task)


def run_build(cfg: BuildConfig, *, runner: str | Runner = "ray",
              shard_fn: Callable[..., ShardResult] = process_shard, address: str | None = None,
              num_cpus: int | None = None, resume: bool = True, progress: bool = True,
              cpus_per_task: float = 1.0, limit: int | None = None,
              log_json: str | Path | None = None) -> BuildResult:
    """Build (or resume, or reuse) the version of `cfg` under `<cfg.out>/<cfg.dataset>/`.

    Args:
        runner: a `Runner`, or 'ray', 'serial' (same output, in-process) or 'auto' (serial for
            small builds without `address`, see `AUTO_SERIAL_MAX_INPUTS`).
        shard_fn: the shard job, `shard_fn(plan, cfg, build_dir=...) -> ShardResult`
            (`process_shard`; tests pass one that fails on purpose).
        address: Ray cluster address; None starts (or reuses) a local Ray.
        num_cpus: CPUs for a local Ray.
        resume: keep shards a previous run finished (verified by sha256).
        progress: show a progress bar labelled with the dataset.
        cpus_per_task: Ray CPUs per shard task (fewer: more concurrent tasks).
        limit: build only the first `limit` inputs (source-id order): a partial build with its
            own version id (`<version>-first<limit>`), `partial: true` in its card, and never
            `latest`.
        log_json: append JSON-lines events (start, one per shard, end) to this file.
    """
    t0 = time.perf_counter()
    cfg = dataclasses.replace(cfg, out=build_location(cfg.out, "out"))  # `--out` skips the parse
    if is_url(cfg.out):  # TODO(issue 13): in progress
        raise ConfigError(f"out: {cfg.out}: builds on object storage are not wired yet")
    _check_out(cfg.out)
    reader, files = reader_and_inputs(cfg.reader)  # a root on a store: read through a view
    items, partial = _apply_limit(reader.list_items(), limit)
    fingerprint = input_fingerprint(items)
    version = (version_id(cfg, fingerprint, code=code_id(), files=files.fingerprint)
               + (f"-first{partial['limit']}" if partial else ""))
    build_dir = Path(cfg.out) / cfg.dataset / version
    t_index = time.perf_counter() - t0
    plans, plan_rejects = plan_shards(items, dataset=cfg.dataset,
                                      samples_per_shard=cfg.shards.samples_per_shard)
    keys = shard_keys(plans, cfg, reader, files)
    log.info("%s: %d inputs indexed in %.1f s -> %d shards, version %s%s", cfg.dataset,
             len(items), t_index, len(plans), version,
             f" (partial: first {limit} of {partial['inputs_available']})" if partial else "")
    del items  # the plans hold what the tasks need
    run = _Run(runner=runner, shard_fn=shard_fn, address=address, num_cpus=num_cpus,
               cpus_per_task=cpus_per_task, resume=resume, progress=progress,
               log_json=log_json, partial=partial)
    try:
        # shared: builds run side by side; `gc` waits for none and removes nothing they use
        with store_lock(build_dir.parent, exclusive=False), _build_lock(build_dir):
            return _build_locked(cfg, _Work(plans, plan_rejects, keys),
                                 (fingerprint, files.fingerprint), version, build_dir, t0,
                                 t_index, run)
    except (FileExistsError, NotADirectoryError, PermissionError) as e:
        raise ConfigError(f"out: cannot write {build_dir}: {type(e).__name__}: {e}") from e


@dataclass(frozen=True)
class _Work:
    """The plan: shards in order, the inputs it rejected, each shard's recipe key."""

    plans: list[ShardPlan]
    rejects: list[RejectRecord]
    keys: dict[str, str]


@dataclass(frozen=True, kw_only=True)
class _Run:
    """How this run goes (none of it changes a byte of the output, except `partial`, which
    changes the inputs and so the version)."""

    runner: str | Runner
    shard_fn: Callable[..., ShardResult]
    address: str | None
    num_cpus: int | None
    cpus_per_task: float
    #: False: compute every shard (no resume, nothing taken from the store).
    resume: bool
    progress: bool
    log_json: str | Path | None
    partial: dict | None


def _run_shards(cfg: BuildConfig, todo: list[ShardPlan], build_dir: Path, run: _Run,
                runner: Runner, bar: BuildProgress, store: ShardStore,
                keys: dict[str, str]) -> list[ShardResult]:
    results = []
    for result in runner.map(run.shard_fn, todo, cfg=cfg, build_dir=str(build_dir)):
        store.put(keys[result.shard.file], build_dir, result)
        bar.shard(result)
        results.append(result)
    return results


def _from_store(work: _Work, done: dict[str, ShardResult], store: ShardStore,
                run: _Run) -> dict[str, ShardResult]:
    """Shards not finished here whose recipe the store holds, intact (re-hashed)."""
    if not run.resume:
        return {}
    return {p.name: r for p in work.plans
            if p.name not in done and (r := store.lookup(work.keys[p.name]))}


def _link_stored(work: _Work, done: dict[str, ShardResult], stored: dict[str, ShardResult],
                 store: ShardStore, build_dir: Path) -> list[ShardResult]:
    """Link the stored shards into this version; add the resumed ones (finished before a
    crash, perhaps before they reached the store) to the store."""
    for name, result in done.items():
        if not store.has(work.keys[name]):
            store.put(work.keys[name], build_dir, result)
    return [store.link(work.keys[n], r, build_dir, n) for n, r in stored.items()]


def _reuse(build_dir: Path, version: str, run: _Run) -> BuildResult:
    card = read_card(build_dir)
    if (build_dir / COMMITTING).exists():  # crashed after the card, before `latest`
        _finish_commit(build_dir, version, partial=bool(card.get("partial")))
    BuildProgress.log_once(run.log_json, "end", dataset=card.get("dataset", ""),
                           version=version, status="reused", counts=card["counts"])
    return BuildResult(build_dir=build_dir, version=version, reused=True,
                       counts=card["counts"], limit=(run.partial or {}).get("limit"))


def _build_locked(cfg: BuildConfig, work: _Work, fingerprints: tuple[str, str], version: str,
                  build_dir: Path, t0: float, t_index: float, run: _Run) -> BuildResult:
    if (build_dir / CARD).exists():
        return _reuse(build_dir, version, run)
    plans, plan_rejects = work.plans, work.rejects
    done = {p.name: r for p in plans if run.resume and (r := load_progress(build_dir, p.name))}
    store = ShardStore(build_dir.parent / STORE)
    stored = _from_store(work, done, store, run)
    todo = [p for p in plans if p.name not in done and p.name not in stored]
    runner = _pick_runner(run.runner, run.address, todo, num_cpus=run.num_cpus,
                          cpus_per_task=run.cpus_per_task)
    # the runner's session first: a wrong --address fails before anything is written
    with runner.session():
        (build_dir / "shards").mkdir(parents=True, exist_ok=True)
        _clean_partial(build_dir)
        reused = _link_stored(work, done, stored, store, build_dir)
        bar = BuildProgress(dataset=cfg.dataset, version=version, bar=run.progress,
                            total_samples=sum(len(p.items) for p in plans) + len(plan_rejects),
                            total_shards=len(plans), log_json=run.log_json)
        try:
            bar.start(list(done.values()) + reused, plan_rejects=len(plan_rejects),
                      build_dir=str(build_dir), runner=runner.name,
                      partial=run.partial, reused_shards=len(reused))
            results = (list(done.values()) + reused
                       + _run_shards(cfg, todo, build_dir, run, runner, bar, store, work.keys))
            t_shards = time.perf_counter() - t0 - t_index
            built = _commit(cfg, results, work, fingerprints, version, build_dir,
                            timings={"index_s": round(t_index, 3),
                                     "shards_s": round(t_shards, 3)},
                            t0=t0, runner=runner.name, run=run,
                            shards={"resumed": len(done), "reused": len(reused),
                                    "built": len(todo),
                                    "built_inputs": sum(len(p.items) for p in todo)})
            bar.end("built", counts=built.counts, timings=built.timings)
            return built
        except BaseException as e:
            bar.end("aborted" if isinstance(e, BuildAborted) else "failed",
                    error=f"{type(e).__name__}: {e}", **bar.rates())
            raise
        finally:
            bar.close()


def _commit(cfg: BuildConfig, results: list[ShardResult], work: _Work,
            fingerprints: tuple[str, str], version: str, build_dir: Path, *, timings: dict,
            t0: float, runner: str, run: _Run, shards: dict[str, int]) -> BuildResult:
    """Tables, then the card, then `latest`: the build is complete only at the end."""
    plan_rejects = work.rejects
    _check_code(results)
    counts = count_summary(results, plan_rejects)
    _check_counts(counts)
    manifests = write_tables(build_dir, results, plan_rejects)
    timings |= {"total_s": round(time.perf_counter() - t0, 3),
                # the inputs this run computed: resumed and reused shards cost no transform
                "samples_per_s": round(shards["built_inputs"] / max(timings["shards_s"], 1e-9),
                                       2),
                "max_worker_rss_mb": round(max((r.max_rss_mb for r in results), default=0), 1)}
    parent = derive_parent(build_dir.parent, cfg.to_dict(), version=version)
    card = _card(cfg, version, fingerprints, counts, timings, runner, shards, parent)
    # a smoke build (--limit) says so, with its limit; `latest` never points at it
    card |= {"partial": bool(run.partial), **(run.partial or {}),
             "shard_keys": work.keys}
    (build_dir / COMMITTING).touch()
    write_card(build_dir, {**card, "manifests": manifests})
    _finish_commit(build_dir, version, partial=bool(run.partial))
    return BuildResult(build_dir=build_dir, version=version, counts=counts,
                       resumed_shards=shards["resumed"], reused_shards=shards["reused"],
                       built_shards=shards["built"], timings=timings, runner=runner,
                       limit=(run.partial or {}).get("limit"))


def _check_code(results: list[ShardResult]) -> None:
    """Every shard was written by this code: a cluster worker running another package or
    codec version would give the version bytes its id does not describe."""
    other = sorted({r.shard.file for r in results if r.shard.code != code_id()})
    if other:
        raise ConfigError(f"{len(other)} shard(s) ({', '.join(other[:3])}...) were written by "
                          f"code other than this driver's ({code_id()}): install the same "
                          "package and libraries on every node, then rebuild")


def _card(cfg: BuildConfig, version: str, fingerprints: tuple[str, str], counts: dict,
          timings: dict, runner: str, shards: dict[str, int], parent: str | None) -> dict:
    return {
        "dataset": cfg.dataset,
        "version": version,
        "parent": parent,
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
        "code_version": __version__,
        "code": code_fingerprint(),
        "config": cfg.to_dict(),
        "input_fingerprint": fingerprints[0],
        "files_fingerprint": fingerprints[1],
        "preprocessing": preprocessing_block(cfg),
        "counts": counts,
        "build": {"runner": runner, "resumed_shards": shards["resumed"],
                  "reused_shards": shards["reused"], "built_shards": shards["built"],
                  "timings": timings,
                  "python": platform.python_version()},
    }
