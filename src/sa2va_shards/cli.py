"""`sa2va-shards`: the one CLI. A thin layer: parse, call the library, print.

`build` and `demo` reach Ray through one lazy import of `pipeline.build`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from sa2va_shards.config import load_config
from sa2va_shards.errors import BuildAborted, ConfigError

__all__ = ["main"]


def _summary_line(counts: dict) -> str:
    reasons = ", ".join(f"{r} {n}" for r, n in counts["rejected_by_reason"].items())
    line = (f"read {counts['read']} = written {counts['written']} + rejected "
            f"{counts['rejected']}" + (f" ({reasons})" if reasons else ""))
    drops = ", ".join(f"{r} {n}" for r, n in counts["objects_dropped_by_reason"].items())
    line += (f"\nobjects: written {counts['objects_written']} (K = 0: "
             f"{counts['objects_k_zero']}), dropped {counts['objects_dropped']}"
             + (f" ({drops})" if drops else ""))
    return line


def _run_build(cfg, args):
    from pipeline.build import run_build  # the only way into Ray

    result = run_build(cfg, address=args.address, num_cpus=args.num_cpus,
                       runner="serial" if args.serial else "ray", resume=not args.no_resume)
    if result.reused:
        print(f"version {result.version} already built at {result.build_dir}: nothing to do")
    else:
        n = result.resumed_shards
        extra = f" (resumed {n} finished shards)" if n else ""
        print(f"built {result.build_dir} version {result.version}{extra} in "
              f"{result.timings['total_s']:.1f} s")
    print(_summary_line(result.counts))
    return result


def cmd_build(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    if args.out:
        cfg = dataclasses.replace(cfg, out=args.out)
    _run_build(cfg, args)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.demo import run_demo  # the only other way into Ray
    from sa2va_shards.viz import render_overlay, render_stats

    out = Path(args.out)
    builds = run_demo(out, scale=args.scale, address=args.address, num_cpus=args.num_cpus,
                      serial=args.serial)
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
    return 0 if all(b.report.ok for b in builds) else 1


def cmd_verify(args: argparse.Namespace) -> int:
    from sa2va_shards.verify import verify_build

    report = verify_build(args.dir, deep=not args.shallow, progress=True)
    for p in report.problems:
        print(p)
    for n in report.notes:
        print(f"note: {n}")
    status = "OK" if report.ok else f"FAILED ({len(report.problems)} problems)"
    print(f"{report.build_dir}: {report.shards} shards, {report.samples} samples: {status}")
    return 0 if report.ok else 1


def cmd_inspect(args: argparse.Namespace) -> int:
    from sa2va_shards.viz import render_overlay

    print(render_overlay(args.dir, args.out, key=args.key))
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from sa2va_shards.viz import render_stats

    print(render_stats(args.dirs, args.out))
    return 0


def cmd_versions(args: argparse.Namespace) -> int:
    from sa2va_shards.versions import list_versions

    rows = list_versions(args.dataset_dir)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        mark = " (latest)" if r["latest"] else ""
        changes = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in r["config_changes"].items())
        print(f"{r['version']}{mark}  {r['created']}  samples {r['samples']}  rejects "
              f"{r['rejects']}  parent {r['parent']}" + (f"\n    {changes}" if changes else ""))
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from sa2va_shards.versions import diff_versions

    d = diff_versions(args.v1, args.v2)
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


def cmd_synth(args: argparse.Namespace) -> int:
    from sa2va_shards.readers import synth_dataset

    root = synth_dataset(args.format, Path(args.out), n_items=args.n, seed=args.seed,
                         faults=tuple(args.faults))
    print(root)
    return 0


def _runtime_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--num-cpus", type=int, help="CPUs for the local Ray")
    p.add_argument("--serial", action="store_true", help="run in-process, no Ray (debugging)")
    p.add_argument("--no-resume", action="store_true", help="rebuild shards a crashed run left")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="sa2va-shards", description=__doc__.splitlines()[0])
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build", help="build a dataset version from a YAML config")
    p.add_argument("config")
    p.add_argument("--out", help="output root (overrides the config's `out`)")
    _runtime_flags(p)
    p.set_defaults(fn=cmd_build)
    p = sub.add_parser("demo", help="synthesise every raw format, build, verify, render PNGs")
    p.add_argument("--out", default="demo-out")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiplies the good items synthesised per format")
    _runtime_flags(p)
    p.set_defaults(fn=cmd_demo)
    p = sub.add_parser("verify", help="re-hash shards and re-derive prompt masks and K")
    p.add_argument("dir")
    p.add_argument("--shallow", action="store_true", help="hashes and counts only")
    p.set_defaults(fn=cmd_verify)
    p = sub.add_parser("inspect", help="render a sample overlay PNG")
    p.add_argument("dir")
    p.add_argument("--key")
    p.add_argument("--out", default="overlay.png")
    p.set_defaults(fn=cmd_inspect)
    p = sub.add_parser("stats", help="K / objects / area histograms of builds as a PNG")
    p.add_argument("dirs", nargs="+")
    p.add_argument("--out", default="stats.png")
    p.set_defaults(fn=cmd_stats)
    p = sub.add_parser("versions", help="list the versions of OUT/<dataset>")
    p.add_argument("dataset_dir")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_versions)
    p = sub.add_parser("diff", help="samples, config and K changes between two versions")
    p.add_argument("v1")
    p.add_argument("v2")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_diff)
    p = sub.add_parser("synth", help="write a small raw dataset in a real format")
    p.add_argument("format")
    p.add_argument("out")
    p.add_argument("--n", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--faults", nargs="*", default=[])
    p.set_defaults(fn=cmd_synth)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.fn(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BuildAborted as e:
        print(f"build aborted: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
