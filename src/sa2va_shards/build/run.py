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
from sa2va_shards.build.remote import (
    COMMITTING,
    StoreIndex,
    commit_on_store,
    finished_shards,
    staging_out,
    store_card,
    store_cards,
)
from sa2va_shards.build.runners import Runner, make_runner, ray_available
from sa2va_shards.build.shard import process_shard
from sa2va_shards.build.store import STORE, ShardStore, store_lock
from sa2va_shards.config import BuildConfig, build_location
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
from sa2va_shards.stores import is_url, store_fs
from sa2va_shards.versions import complete_cards, derive_parent, set_latest

__all__ = ["AUTO_SERIAL_MAX_INPUTS", "BuildResult", "run_build"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class BuildResult:
    """Where a build went and what it counted."""

    #: the version folder (for a build to a store: its staging folder on this machine).
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
    #: the version folder's URL for a build to a store (`out: s3://...`); None: local.
    url: str | None = None


#: `runner="auto"` builds in-process when the shards still to build hold at most this many
#: inputs (or are one shard): Ray's fixed cost (~8-10 s: start-up, torch imported per worker)
#: outweighs its speed-up below this (docs/benchmarks.md: 46 inputs 1.0 s serial vs 7.7 s on
#: a 2-CPU Ray, 400: 8.0 vs 16.0 s; break-even ~800-1600 inputs on 2 cores, ~300 on 16).
AUTO_SERIAL_MAX_INPUTS = 500


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
    _check_store(cfg.out) if is_url(cfg.out) else _check_out(cfg.out)
    work, fingerprints, version, partial = _index(cfg, limit)
    out = _output(cfg, version)
    t_index = time.perf_counter() - t0
    log.info("%s: %d inputs indexed in %.1f s -> %d shards, version %s%s", cfg.dataset,
             sum(len(p.items) for p in work.plans) + len(work.rejects), t_index,
             len(work.plans), version,
             f" (partial: first {limit} of {partial['inputs_available']})" if partial else "")
    run = _Run(runner=runner, shard_fn=shard_fn, address=address, num_cpus=num_cpus,
               cpus_per_task=cpus_per_task, resume=resume, progress=progress,
               log_json=log_json, partial=partial)
    try:
        # shared: builds run side by side; `gc` waits for none and removes nothing they use
        with store_lock(out.build_dir.parent, exclusive=False), _build_lock(out.build_dir):
            return _build_locked(cfg, work, fingerprints, version, out, t0, t_index, run)
    except (FileExistsError, NotADirectoryError, PermissionError) as e:
        raise ConfigError(f"out: cannot write {out.dest}: {type(e).__name__}: {e}") from e


def _index(cfg: BuildConfig, limit: int | None
           ) -> tuple[_Work, tuple[str, str], str, dict | None]:
    """Index the inputs, pin the version id, plan the shards and their recipe keys: the
    plan, the (items, files) fingerprints, the version and the `--limit` note."""
    with reader_and_inputs(cfg.reader) as (reader, files):  # a root on a store: its view
        items, partial = _apply_limit(reader.list_items(), limit)
        fingerprint = input_fingerprint(items)
        version = (version_id(cfg, fingerprint, code=code_id(), files=files.fingerprint)
                   + (f"-first{partial['limit']}" if partial else ""))
        plans, plan_rejects = plan_shards(items, dataset=cfg.dataset,
                                          samples_per_shard=cfg.shards.samples_per_shard)
        keys = shard_keys(plans, cfg, reader, files)
    return (_Work(plans, plan_rejects, keys), (fingerprint, files.fingerprint), version,
            partial)


@dataclass(frozen=True)
class _Out:
    """Where the version goes: `build_dir` on this machine (the version folder, or for a
    build to a store its staging folder: locks, tables and card on their way up) and `dest`,
    the version folder the shards go to (the same path, or its URL on the store)."""

    build_dir: Path
    dest: str

    @property
    def remote(self) -> bool:
        return is_url(self.dest)

    def shard_store(self) -> ShardStore | StoreIndex:
        if self.remote:
            return StoreIndex(self.dest.rsplit("/", 1)[0])
        return ShardStore(self.build_dir.parent / STORE)

    def finished(self, plans: list[ShardPlan]) -> dict[str, ShardResult]:
        """Shards a previous run of this version finished (for resume)."""
        if self.remote:
            return finished_shards(self.dest, {p.name for p in plans})
        return {p.name: r for p in plans if (r := load_progress(self.build_dir, p.name))}

    def cards(self) -> list[dict]:
        """The cards of the dataset's complete versions (lineage)."""
        if self.remote:
            return store_cards(self.dest.rsplit("/", 1)[0])
        return complete_cards(self.build_dir.parent)


def _output(cfg: BuildConfig, version: str) -> _Out:
    if not is_url(cfg.out):
        build_dir = Path(cfg.out) / cfg.dataset / version
        return _Out(build_dir, str(build_dir))
    return _Out(Path(staging_out(cfg.out)) / cfg.dataset / version,
                f"{cfg.out.rstrip('/')}/{cfg.dataset}/{version}")


def _check_store(out: str) -> None:
    """A store `out` whose bucket (first path part) is missing or unreachable fails here,
    before anything is written."""
    fs, root = store_fs(out)
    bucket = root.strip("/").split("/", 1)[0]
    try:
        found = fs.exists(bucket)
    except OSError as e:
        raise ConfigError(f"out: {out}: cannot reach the store: {type(e).__name__}: {e}") from e
    if not found:
        raise ConfigError(f"out: {out}: no bucket {bucket!r} on this store (or no access)")


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


def _run_shards(cfg: BuildConfig, todo: list[ShardPlan], out: _Out, run: _Run,
                runner: Runner, bar: BuildProgress, store: ShardStore | StoreIndex,
                keys: dict[str, str]) -> list[ShardResult]:
    results = []
    for result in runner.map(run.shard_fn, todo, cfg=cfg, build_dir=out.dest):
        store.put(keys[result.shard.file], out.dest, result)
        bar.shard(result)
        results.append(result)
    return results


def _from_store(work: _Work, done: dict[str, ShardResult], store: ShardStore | StoreIndex,
                run: _Run) -> dict[str, ShardResult]:
    """Shards not finished here whose recipe the store holds, intact (re-hashed)."""
    if not run.resume:
        return {}
    return {p.name: r for p in work.plans
            if p.name not in done and (r := store.lookup(work.keys[p.name]))}


def _link_stored(work: _Work, done: dict[str, ShardResult], stored: dict[str, ShardResult],
                 store: ShardStore | StoreIndex, out: _Out) -> list[ShardResult]:
    """Link the stored shards into this version; add the resumed ones (finished before a
    crash, perhaps before they reached the store) to the store."""
    for name, result in done.items():
        if not store.has(work.keys[name]):
            store.put(work.keys[name], out.dest, result)
    return [store.link(work.keys[n], r, out.dest, n) for n, r in stored.items()]


def _finish_commit(out: _Out, version: str, *, partial: bool = False) -> None:
    """The last steps of a commit, safe to repeat: on a store the tables and the card go up
    (`remote.commit_on_store`); `latest` moves (never to a partial build); the sidecars go."""
    if out.remote:
        commit_on_store(out.dest, out.build_dir, latest=not partial)
    elif not partial:
        set_latest(out.build_dir.parent, version)
    shutil.rmtree(out.build_dir / PROGRESS_DIR, ignore_errors=True)
    (out.build_dir / COMMITTING).unlink(missing_ok=True)


def _committed(out: _Out) -> dict | None:
    """The version's card if it is committed (finishing a commit a crash cut short), else
    None. On a store the store's card decides: a rerun on any machine that finds it with the
    `.committing` mark finishes the commit; a staging card without a card on the store (the
    version was deleted there since) is dropped and the version built again."""
    card_path = out.build_dir / CARD
    if card_path.exists() and (out.build_dir / COMMITTING).exists():
        card = read_card(out.build_dir)
        _finish_commit(out, card["version"], partial=bool(card.get("partial")))
        return card
    if not out.remote:
        return read_card(out.build_dir) if card_path.exists() else None
    card, unfinished = store_card(out.dest)
    if card is None:
        card_path.unlink(missing_ok=True)
    elif unfinished:
        commit_on_store(out.dest, None, latest=not card.get("partial"))
    return card


def _reuse(card: dict, out: _Out, version: str, run: _Run) -> BuildResult:
    BuildProgress.log_once(run.log_json, "end", dataset=card.get("dataset", ""),
                           version=version, status="reused", counts=card["counts"])
    return BuildResult(build_dir=out.build_dir, version=version, reused=True,
                       counts=card["counts"], limit=(run.partial or {}).get("limit"),
                       url=out.dest if out.remote else None)


def _build_locked(cfg: BuildConfig, work: _Work, fingerprints: tuple[str, str], version: str,
                  out: _Out, t0: float, t_index: float, run: _Run) -> BuildResult:
    if (card := _committed(out)) is not None:
        return _reuse(card, out, version, run)
    plans, plan_rejects = work.plans, work.rejects
    done = out.finished(plans) if run.resume else {}
    store = out.shard_store()
    stored = _from_store(work, done, store, run)
    todo = [p for p in plans if p.name not in done and p.name not in stored]
    runner = _pick_runner(run.runner, run.address, todo, num_cpus=run.num_cpus,
                          cpus_per_task=run.cpus_per_task)
    # the runner's session first: a wrong --address fails before anything is written
    with runner.session():
        (out.build_dir / "shards").mkdir(parents=True, exist_ok=True)
        _clean_partial(out.build_dir)
        reused = _link_stored(work, done, stored, store, out)
        bar = BuildProgress(dataset=cfg.dataset, version=version, bar=run.progress,
                            total_samples=sum(len(p.items) for p in plans) + len(plan_rejects),
                            total_shards=len(plans), log_json=run.log_json)
        try:
            bar.start(list(done.values()) + reused, plan_rejects=len(plan_rejects),
                      build_dir=out.dest, runner=runner.name,
                      partial=run.partial, reused_shards=len(reused))
            results = (list(done.values()) + reused
                       + _run_shards(cfg, todo, out, run, runner, bar, store, work.keys))
            t_shards = time.perf_counter() - t0 - t_index
            built = _commit(cfg, results, work, fingerprints, version, out,
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
            fingerprints: tuple[str, str], version: str, out: _Out, *, timings: dict,
            t0: float, runner: str, run: _Run, shards: dict[str, int]) -> BuildResult:
    """Tables, then the card, then `latest`: the build is complete only at the end."""
    plan_rejects = work.rejects
    _check_code(results)
    counts = count_summary(results, plan_rejects)
    _check_counts(counts)
    manifests = write_tables(out.build_dir, results, plan_rejects)
    timings |= {"total_s": round(time.perf_counter() - t0, 3),
                # the inputs this run computed: resumed and reused shards cost no transform
                "samples_per_s": round(shards["built_inputs"] / max(timings["shards_s"], 1e-9),
                                       2),
                "max_worker_rss_mb": round(max((r.max_rss_mb for r in results), default=0), 1)}
    parent = derive_parent(out.cards(), cfg.to_dict(), version=version)
    card = _card(cfg, version, fingerprints, counts, timings, runner, shards, parent)
    # a smoke build (--limit) says so, with its limit; `latest` never points at it
    card |= {"partial": bool(run.partial), **(run.partial or {}),
             "shard_keys": work.keys}
    (out.build_dir / COMMITTING).touch()
    write_card(out.build_dir, {**card, "manifests": manifests})
    _finish_commit(out, version, partial=bool(run.partial))
    return BuildResult(build_dir=out.build_dir, version=version, counts=counts,
                       resumed_shards=shards["resumed"], reused_shards=shards["reused"],
                       built_shards=shards["built"], timings=timings, runner=runner,
                       limit=(run.partial or {}).get("limit"),
                       url=out.dest if out.remote else None)


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
