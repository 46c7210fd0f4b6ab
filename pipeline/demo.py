"""The demo: synthesise every raw format (with a few faults each), build them all on one local
Ray session, verify each build, render an overlay and the statistics."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sa2va_shards.build import BuildResult, make_runner, run_build
from sa2va_shards.config import parse_config
from sa2va_shards.readers import READERS
from sa2va_shards.synth import synth_dataset
from sa2va_shards.verify import VerifyReport, verify_build

__all__ = ["DEMO_SETS", "DemoBuild", "run_demo"]

#: (reader format, dataset name, items, injected faults, reader options): every reject path
#: shows up in the demo.
DEMO_SETS: tuple[tuple[str, str, int, tuple[str, ...], dict], ...] = (
    ("coco", "demo_coco", 48, ("corrupt_image", "missing_image", "size_mismatch", "bad_rle",
                               "no_objects", "empty_mask", "mode_p", "exif_rotated"), {}),
    ("osprey", "demo_osprey", 12, ("missing_image", "size_mismatch", "bad_rle", "empty_mask"),
     {}),
    ("describe_anything", "demo_dam", 12, ("unsafe_pickle", "corrupt_image", "bad_rle"), {}),
    ("refcoco", "demo_refcoco", 12, ("missing_image", "bad_polygon", "missing_ann"), {}),
    ("sav", "demo_sav", 4, ("corrupt_video", "size_mismatch"),
     {"expressions": "sam_v_final_v3.json"}),
    ("mevis", "demo_mevis", 4, ("missing_frame", "bad_rle", "missing_mask_id"), {}),
    ("revos", "demo_revos", 4, ("size_mismatch", "mask_length"), {}),
    ("refytvos", "demo_refytvos", 4, ("corrupt_frame", "bad_expression"), {}),
    ("gcg", "demo_gcg", 6, ("bad_rle", "no_grounding", "empty_mask"), {}),
    ("llava", "demo_llava", 8, ("missing_image", "no_answer"), {}),
    ("chatunivi", "demo_chatunivi", 3, ("corrupt_video",), {}),
)


@dataclass(frozen=True, kw_only=True)
class DemoBuild:
    """One dataset of the demo: its build and its verification."""

    format: str
    result: BuildResult
    report: VerifyReport


def run_demo(out: Path, *, scale: float = 1.0, address: str | None = None,
             num_cpus: int | None = None, serial: bool = False,
             log_json: str | Path | None = None) -> list[DemoBuild]:
    """Synthesise, build and verify every demo set whose reader is registered; `scale`
    multiplies the number of good items per set. The demo runs on Ray unless `serial`
    (showing the cluster path is its point), whatever the builds' size."""
    builds = []
    # one Ray for all demo builds (a start costs seconds; `run_ray` reuses a live one)
    runner = make_runner("serial" if serial else "ray", address=address, num_cpus=num_cpus)
    with runner.session():
        for fmt, name, n, faults, options in DEMO_SETS:
            if fmt not in READERS:
                continue
            raw = synth_dataset(fmt, out / "raw" / fmt, n_items=max(2, round(n * scale)),
                                seed=0, faults=faults)
            cfg = parse_config({"dataset": name, "reader": {"format": fmt, "root": str(raw),
                                                            "options": options},
                                "shards": {"samples_per_shard": 16}, "out": str(out / "shards")})
            result = run_build(cfg, runner=runner, log_json=log_json)
            builds.append(DemoBuild(format=fmt, result=result,
                                    report=verify_build(result.build_dir)))
    return builds
