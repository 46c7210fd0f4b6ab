"""The demo: synthesise every raw format (with a few faults each), build them all on one local
Ray session, verify each build, render an overlay and the statistics."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pipeline.build import BuildResult, run_build
from sa2va_shards.config import parse_config
from sa2va_shards.readers import READERS, synth_dataset
from sa2va_shards.verify import VerifyReport, verify_build

__all__ = ["DEMO_SETS", "DemoBuild", "run_demo"]

#: (reader format, dataset name, injected faults): every reject path shows up in the demo.
DEMO_SETS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("coco", "demo_coco", ("corrupt_image", "missing_image", "size_mismatch", "bad_rle",
                           "no_objects", "empty_mask", "mode_p", "exif_rotated")),
    ("osprey", "demo_osprey", ("missing_image", "size_mismatch", "bad_rle", "empty_mask")),
    ("describe_anything", "demo_dam", ("unsafe_pickle", "corrupt_image", "bad_rle")),
    ("refcoco", "demo_refcoco", ("missing_image", "bad_polygon", "missing_ann")),
    ("sav", "demo_sav", ("corrupt_video", "size_mismatch")),
)


@dataclass(frozen=True, kw_only=True)
class DemoBuild:
    """One dataset of the demo: its build and its verification."""

    format: str
    result: BuildResult
    report: VerifyReport


@contextmanager
def _ray_session(address: str | None, num_cpus: int | None, serial: bool) -> Iterator[None]:
    """One Ray for all demo builds (a start costs seconds; `run_ray` reuses a live one)."""
    if serial:
        yield
        return
    import ray

    ray.init(address=address, num_cpus=None if address else num_cpus,
             include_dashboard=False)
    try:
        yield
    finally:
        ray.shutdown()


def run_demo(out: Path, *, n_items: int = 48, address: str | None = None,
             num_cpus: int | None = None, serial: bool = False) -> list[DemoBuild]:
    """Synthesise, build and verify every demo set whose reader is registered."""
    sets = [(fmt, name, faults) for fmt, name, faults in DEMO_SETS if fmt in READERS]
    builds = []
    with _ray_session(address, num_cpus, serial):
        for fmt, name, faults in sets:
            n = n_items if fmt == "coco" else max(4, n_items // 4)  # video/others: smaller
            raw = synth_dataset(fmt, out / "raw" / fmt, n_items=n, seed=0, faults=faults)
            cfg = parse_config({"dataset": name, "reader": {"format": fmt, "root": str(raw)},
                                "shards": {"samples_per_shard": 16}, "out": str(out / "shards")})
            result = run_build(cfg, runner="serial" if serial else "ray", address=address,
                               num_cpus=num_cpus)
            builds.append(DemoBuild(format=fmt, result=result,
                                    report=verify_build(result.build_dir)))
    return builds
