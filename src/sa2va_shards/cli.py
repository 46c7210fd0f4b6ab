"""`sa2va-shards`: the one CLI. A thin layer: parse, call the library, print.

`build` runs the library's `run_build` (Ray only when its runner is Ray); `demo` is the one
lazy import of `pipeline`.
A user mistake ends in one `error: ...` line on stderr and exit code 2, never a traceback
(`-v` shows the traceback of an unexpected error).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import NoReturn

from sa2va_shards import __version__
from sa2va_shards.config import load_config
from sa2va_shards.errors import BuildAborted, ConfigError
from sa2va_shards.format import SCHEMA_VERSION
from sa2va_shards.locate import OUT_ENV, resolve_build, resolve_dataset
from sa2va_shards.stores import is_url

__all__ = ["main"]

#: exit codes: a failed check (verify, demo), a user or setup error, an unexpected error.
EXIT_FAILED, EXIT_USAGE, EXIT_BUG = 1, 2, 3


def _summary_line(counts: dict) -> str:
    reasons = ", ".join(f"{r} {n}" for r, n in counts["rejected_by_reason"].items())
    line = (f"read {counts['read']} = written {counts['written']} + rejected "
            f"{counts['rejected']}" + (f" ({reasons})" if reasons else ""))
    drops = ", ".join(f"{r} {n}" for r, n in counts["objects_dropped_by_reason"].items())
    line += (f"\nobjects: written {counts['objects_written']} (K = 0: "
             f"{counts['objects_k_zero']}), dropped {counts['objects_dropped']}"
             + (f" ({drops})" if drops else ""))
    return line


def _runner(args: argparse.Namespace) -> str:
    return "serial" if args.serial else args.runner


def _logs_above_bars():
    """Log lines (-v) printed through tqdm, so they do not tear the progress bars."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    return logging_redirect_tqdm() if logging.getLogger("sa2va_shards").isEnabledFor(
        logging.INFO) else contextlib.nullcontext()


def _print_build(result) -> None:
    where = result.url or result.build_dir  # a build to a store: its URL, not the staging
    if result.reused:
        print(f"version {result.version} already built at {where}: nothing to do")
    else:
        n = result.resumed_shards
        extra = f", resumed {n} finished shards" if n else ""
        print(f"built {where} version {result.version} ({result.runner}{extra}) "
              f"in {result.timings['total_s']:.1f} s: {result.built_shards} shards computed, "
              f"{result.reused_shards} reused from the store")
    if result.limit:
        print(f"partial build (--limit {result.limit}): `latest` not moved; read it as "
              f"{where}" + ("" if result.url else
                            f" or {result.build_dir.parent.name}@{result.version}"))
    print(_summary_line(result.counts))


def cmd_build(args: argparse.Namespace) -> int:
    from sa2va_shards.build import run_build

    cfg = load_config(args.config)
    if args.out:
        cfg = dataclasses.replace(cfg, out=args.out)
    with _logs_above_bars():
        result = run_build(cfg, address=args.address, num_cpus=args.num_cpus,
                           runner=_runner(args), resume=not args.no_resume, limit=args.limit,
                           log_json=args.log_json, progress=not args.no_progress)
    _print_build(result)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.demo import run_demo  # the demo's one Ray session
    from sa2va_shards.viz import render_overlay, render_stats

    out = Path(args.out)
    with _logs_above_bars():
        builds = run_demo(out, scale=args.scale, address=args.address, num_cpus=args.num_cpus,
                          serial=_runner(args) == "serial", log_json=args.log_json)
    print(f"\nraw data: {out / 'raw'}  (one folder per format, each in its published layout)")
    for b in builds:
        c = b.result.counts
        k0 = c["objects_k_zero"] / max(c["objects_written"], 1)
        status = "OK" if b.report.ok else f"{len(b.report.problems)} problems"
        print(f"\n== {b.format}: {b.result.build_dir}  (verify: {status}, K = 0 rate "
              f"{100 * k0:.1f}%)")
        print(_summary_line(c))
        for p in b.report.problems:
            print("  " + p)
    first = builds[0].result.build_dir
    overlay = render_overlay(first, out / "overlay.png")
    stats = render_stats([b.result.build_dir for b in builds], out / "stats.png")
    print(f"\noverlay: {overlay}\nstats:   {stats}")
    return 0 if all(b.report.ok for b in builds) else EXIT_FAILED


def cmd_verify(args: argparse.Namespace) -> int:
    from sa2va_shards.loader.remote import fetch_version
    from sa2va_shards.verify import verify_build

    with contextlib.ExitStack() as stack:
        if is_url(args.build):  # a version on a store: downloaded whole, checked, removed
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="sa2va-verify-"))
            build = fetch_version(args.build, tmp)
        else:
            build = resolve_build(args.build, args.root, allow_incomplete=True)
        report = verify_build(build, deep=not args.shallow, progress=True)
    for p in report.problems:
        print(p)
    for n in report.notes:
        print(f"note: {n}")
    status = "OK" if report.ok else f"FAILED ({len(report.problems)} problems)"
    where = args.build if is_url(args.build) else report.build_dir
    print(f"{where}: {report.shards} shards, {report.samples} samples: {status}")
    return 0 if report.ok else EXIT_FAILED


def cmd_inspect(args: argparse.Namespace) -> int:
    from sa2va_shards.viz import render_overlay

    print(render_overlay(resolve_build(args.build, args.root), args.out, key=args.key))
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from sa2va_shards.viz import render_stats

    print(render_stats([resolve_build(b, args.root) for b in args.builds], args.out))
    return 0


def cmd_versions(args: argparse.Namespace) -> int:
    from sa2va_shards.build.remote import store_versions
    from sa2va_shards.versions import list_versions

    if is_url(args.dataset):
        dataset_dir, rows = args.dataset, store_versions(args.dataset)
    else:
        dataset_dir = resolve_dataset(args.dataset, args.root)
        rows = list_versions(dataset_dir)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{dataset_dir}: {len(rows)} complete versions")
    for r in rows:
        mark = " (latest)" if r["latest"] else ""
        mark += f" (partial: first {r['limit']})" if r.get("partial") else ""
        changes = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in r["config_changes"].items())
        print(f"{r['version']}{mark}  {r['created']}  samples {r['samples']}  rejects "
              f"{r['rejects']}  parent {r['parent']}" + (f"\n    {changes}" if changes else ""))
    return 0


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def cmd_gc(args: argparse.Namespace) -> int:
    from sa2va_shards.build.remote import collect_store_garbage
    from sa2va_shards.build.store import collect_garbage

    if is_url(args.dataset):
        dataset_dir, collect = args.dataset, collect_store_garbage
    else:
        dataset_dir, collect = resolve_dataset(args.dataset, args.root), collect_garbage
    r = collect(dataset_dir, keep_last=args.keep_last, keep=args.keep, dry_run=args.dry_run)
    verb = "would remove" if r.dry_run else "removed"
    print(f"{dataset_dir}: kept {len(r.kept)} versions ({', '.join(r.kept) or 'none'}); {verb} "
          f"{len(r.removed_versions)} versions and {r.removed_objects} store objects, "
          f"{'would free' if r.dry_run else 'freed'} {_mib(r.freed_bytes)}")
    for v in r.removed_versions:
        print(f"  {verb} {v}")
    for note in r.notes:
        print(f"  {note}")
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from sa2va_shards.publish import publish

    r = publish(resolve_build(args.build, args.root), args.url)
    print(f"published {r.url}: {r.uploaded} shards uploaded, {r.already_there} already there, "
          f"tables, card" + (", latest" if r.latest else " (latest not moved)"))
    return 0


def _diff_pair(args: argparse.Namespace, tmp: str) -> tuple[Path, Path]:
    """Two builds; with one, that build's parent (the version it derives from) against it. A
    store URL is mirrored (card and tables: all a diff reads) into `tmp`."""
    from sa2va_shards.loader.remote import REMOTE_MARKER, mirror
    from sa2va_shards.manifest import read_card

    def build(arg: str) -> Path:
        return mirror(arg, tmp) if is_url(arg) else resolve_build(arg, args.root)

    new = build(args.new if args.new else args.old)
    if args.new:
        return build(args.old), new
    parent = read_card(new).get("parent")
    if not parent:
        raise ConfigError(f"{new}: has no parent version to diff against; give two versions")
    if is_url(args.old):
        url = json.loads((new / REMOTE_MARKER).read_text())["url"]
        return build(f"{url.rsplit('/', 1)[0]}/{parent}"), new
    return resolve_build(new.parent / parent), new


def cmd_diff(args: argparse.Namespace) -> int:
    from sa2va_shards.versions import diff_versions

    with tempfile.TemporaryDirectory(prefix="sa2va-diff-") as tmp:
        d = diff_versions(*_diff_pair(args, tmp))
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    s = d["samples"]
    print(f"{d['from']} -> {d['to']}: {len(s['added'])} added, {len(s['removed'])} removed, "
          f"{len(s['changed'])} changed, {s['unchanged']} unchanged"
          + ("; input changed" if d["input_changed"] else ""))
    for k, (a, b) in d["config_changes"].items():
        print(f"  config {k}: {a!r} -> {b!r}")
    for k, v in d["k_histogram_change"].items():
        print(f"  K = {k}: {v:+d} objects")
    return 0


def _fault_names() -> dict[str, tuple[str, ...]]:
    """format -> the faults its synthesiser can inject."""
    from sa2va_shards.synth import SYNTHS

    return {name: synth.faults for name, synth in sorted(SYNTHS.items())}


def cmd_synth(args: argparse.Namespace) -> int:
    from sa2va_shards.synth import synth_dataset

    known = _fault_names()
    if args.format not in known:
        raise ConfigError(f"synth: unknown format {args.format!r}; known: {', '.join(known)}")
    unknown = [f for f in args.faults if f not in known[args.format]]
    if unknown:
        raise ConfigError(f"synth {args.format}: unknown faults {', '.join(unknown)}; known: "
                          f"{', '.join(known[args.format])}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"synth: {out} exists and is not a folder")
    root = synth_dataset(args.format, out, n_items=args.n, seed=args.seed,
                         faults=tuple(args.faults))
    print(root)
    return 0


# --- the parser -------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """Usage mistakes are one line too (argparse prints the whole usage otherwise)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} must be >= 1")
    return n


def _verbose(p: argparse.ArgumentParser, default: object) -> None:
    # on the top parser and on each verb, so `-v` works before or after the verb; SUPPRESS
    # keeps a verb's parser from resetting a `-v` given before it
    p.add_argument("-v", "--verbose", action="store_true", default=default,
                   help="log each step (index, plan, runner, every finished shard); "
                        "tracebacks for unexpected errors")


_BUILD_ARG = ("a build: OUT/<dataset>/<version>, a dataset folder OUT/<dataset> (its `latest`), "
              "or DATASET[@VERSION] (a unique version prefix will do) under --root")


def _root_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", metavar="DIR",
                   help=f"output root that DATASET@VERSION resolves against (default: ${OUT_ENV}"
                        ", else ./out, the config's default `out`)")


def _runtime_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", metavar="ADDR",
                   help="join a Ray cluster: `auto` on a cluster node, or ray://HEAD:10001 "
                        "(needs `pip install ray[client]`); default: a local Ray")
    p.add_argument("--num-cpus", type=_positive, metavar="N",
                   help="CPUs for the local Ray (default: all)")
    p.add_argument("--runner", choices=("auto", "ray", "serial"), default="auto",
                   help="where shards run; same bytes either way. auto (default): in-process "
                        "when at most 500 inputs (or one shard) remain and no --address, "
                        "else Ray")
    p.add_argument("--serial", action="store_true", help="same as --runner serial")
    p.add_argument("--no-resume", action="store_true",
                   help="rebuild the shards a crashed run finished instead of keeping them")
    p.add_argument("--log-json", "--progress-json", metavar="FILE", dest="log_json",
                   help="append JSON lines to FILE: start, one per finished shard (counts, "
                        "samples/s, reject rate, ETA), end; `tail -f` it on a cluster")


def _add_build(sub) -> None:
    p = sub.add_parser("build", help="build (or resume, or reuse) the version of a YAML config")
    p.add_argument("config", help="the build's YAML config (see configs/)")
    p.add_argument("--out", metavar="DIR", help="output root (overrides the config's `out`)")
    p.add_argument("--limit", type=_positive, metavar="N",
                   help="smoke build of the first N inputs (source-id order): its own version "
                        "<version>-firstN, `partial: true` in its card, never `latest`")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _runtime_flags(p)
    p.set_defaults(fn=cmd_build)


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="synthesise every raw format, build, verify, render PNGs")
    p.add_argument("--out", metavar="DIR", default="demo-out",
                   help="folder for raw data, builds and PNGs (default: demo-out)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiplies the good items synthesised per format (default: 1)")
    _runtime_flags(p)
    p.set_defaults(fn=cmd_demo)


def _add_readers(sub) -> None:
    p = sub.add_parser("verify", help="re-hash shards and re-derive prompt masks and K")
    p.add_argument("build", help=_BUILD_ARG + "; or a store URL (s3://...), downloaded whole "
                   "to a temporary folder ($TMPDIR) first")
    p.add_argument("--shallow", action="store_true",
                   help="hashes and counts only (no decoding, no K re-derived)")
    _root_flag(p)
    p.set_defaults(fn=cmd_verify)
    p = sub.add_parser("inspect", help="render a sample overlay PNG")
    p.add_argument("build", help=_BUILD_ARG)
    p.add_argument("--key", help="sample key (default: the first with the most objects)")
    p.add_argument("--out", metavar="PNG", default="overlay.png",
                   help="where to write the PNG (default: overlay.png)")
    _root_flag(p)
    p.set_defaults(fn=cmd_inspect)
    p = sub.add_parser("stats", help="K / objects / area histograms of builds as a PNG")
    p.add_argument("builds", nargs="+", metavar="build", help=_BUILD_ARG + "; several compare")
    p.add_argument("--out", metavar="PNG", default="stats.png",
                   help="where to write the PNG (default: stats.png)")
    _root_flag(p)
    p.set_defaults(fn=cmd_stats)


def _add_history(sub) -> None:
    p = sub.add_parser("versions", help="list the complete versions of a dataset")
    p.add_argument("dataset", help="a dataset folder OUT/<dataset>, a build folder in it, "
                                   "DATASET under --root, or a dataset folder's store URL")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _root_flag(p)
    p.set_defaults(fn=cmd_versions)
    p = sub.add_parser("diff", help="samples, config and K changes between two versions")
    p.add_argument("old", help=_BUILD_ARG)
    p.add_argument("new", nargs="?",
                   help="the newer build (same forms); left out: OLD's parent -> OLD")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _root_flag(p)
    p.set_defaults(fn=cmd_diff)
    p = sub.add_parser("gc", help="remove old versions and the store objects only they use")
    p.add_argument("dataset", help="a dataset folder OUT/<dataset>, a build folder in it, "
                                   "DATASET under --root, or a dataset folder's store URL")
    p.add_argument("--keep-last", type=int, required=True, metavar="N",
                   help="keep the N newest complete versions (`latest` is always kept)")
    p.add_argument("--keep", action="append", default=[], metavar="VERSION",
                   help="also keep this version (or a unique prefix of one); repeatable")
    p.add_argument("--dry-run", action="store_true",
                   help="say what would be removed and freed, remove nothing")
    _root_flag(p)
    p.set_defaults(fn=cmd_gc)
    p = sub.add_parser("publish", help="upload a committed version to object storage, in the "
                                       "commit order (shards, tables, card, latest); resumes")
    p.add_argument("build", help=_BUILD_ARG)
    p.add_argument("url", help="the store folder that plays `out`: s3://bucket/prefix, gs://..")
    _root_flag(p)
    p.set_defaults(fn=cmd_publish)


def _synth_epilog() -> str:
    lines = ["formats and the faults each can inject (--faults):"]
    for fmt, faults in _fault_names().items():
        lines += textwrap.wrap(", ".join(faults) or "-", 78, initial_indent=f"  {fmt:<18} ",
                               subsequent_indent=" " * 21)
    return "\n".join(lines)


def _add_synth(sub) -> None:
    p = sub.add_parser("synth", help="write a small raw dataset in a real on-disk format",
                       epilog=_synth_epilog(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("format", help="reader format (listed below)")
    p.add_argument("out", help="folder to write the dataset into")
    p.add_argument("--n", type=_positive, default=24, help="good items (default: 24)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--faults", nargs="*", default=[], metavar="FAULT",
                   help="add one broken item per fault (names listed below)")
    p.set_defaults(fn=cmd_synth)


def _parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="sa2va-shards", description=__doc__.splitlines()[0])
    ap.add_argument("--version", action="version",
                    version=f"sa2va-shards {__version__} (schema {SCHEMA_VERSION})")
    _verbose(ap, False)
    sub = ap.add_subparsers(dest="command", required=True, metavar="VERB")
    for add in (_add_build, _add_demo, _add_readers, _add_history, _add_synth):
        add(sub)
    for p in sub.choices.values():
        _verbose(p, argparse.SUPPRESS)
    return ap


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # only our own loggers get chatty: Ray's INFO lines are noise to a user
    for name in ("sa2va_shards", "pipeline"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)


def _error(message: str) -> None:
    print(" ".join(str(message).split("\n")), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return args.fn(args)
    except ConfigError as e:
        _error(f"error: {e}")
        return EXIT_USAGE
    except BuildAborted as e:
        _error(f"build aborted: {e}")
        return EXIT_FAILED
    except OSError as e:  # unreadable / unwritable paths, a full disk: the machine, not a bug
        _error(f"error: {e}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        _error("interrupted (rerun `build` to resume where it stopped)")
        return 130
    except Exception as e:
        if args.verbose:
            raise
        _error(f"internal error: {type(e).__name__}: {e} (a bug: rerun with -v for the "
               "traceback and report it)")
        return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
