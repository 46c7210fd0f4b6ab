"""Serial vs Ray on small builds: the figures behind `--runner auto` (AUTO_SERIAL_MAX_INPUTS).

Each size is built twice from the same synthetic COCO-format files, in-process and on a fresh
local Ray (its start-up included, as a CLI user pays it), each into its own output folder;
the two builds have the same version and the same shard bytes.

Usage: python benchmarks/bench_runner.py [--sizes 46 400 1600] [--num-cpus 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from sa2va_shards.build.run import run_build
from sa2va_shards.config import parse_config
from sa2va_shards.synth import synth_dataset


def _time_build(raw: Path, out: Path, runner: str, num_cpus: int) -> tuple[float, str]:
    cfg = parse_config({"dataset": "bench_runner", "reader": {"format": "coco", "root": str(raw)},
                        "shards": {"samples_per_shard": 64}, "out": str(out)})
    t = time.perf_counter()
    result = run_build(cfg, runner=runner, progress=False, num_cpus=num_cpus)
    return time.perf_counter() - t, result.version


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[46, 400, 1600],
                    help="inputs per build")
    ap.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray")
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            raw = synth_dataset("coco", Path(tmp) / f"raw{n}", n_items=n, seed=0)
            serial, v1 = _time_build(raw, Path(tmp) / f"serial{n}", "serial", args.num_cpus)
            ray, v2 = _time_build(raw, Path(tmp) / f"ray{n}", "ray", args.num_cpus)
            assert v1 == v2
            print(f"{n:>6} inputs: serial {serial:6.1f} s   ray {ray:6.1f} s")


if __name__ == "__main__":
    main()
