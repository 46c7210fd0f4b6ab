"""A Describe-Anything (DLC-SFT) set: `<SPLIT>/images/*.tar` WebDataset shards of `{id}.jpg` +
`{id}.pickle`, with injected faults."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from sa2va_shards.synth import common

__all__ = ["DAM_FAULTS", "write", "write_tar"]

#: fault kinds `write` can inject: one record each, in split `COCOStuff`, id `fault_<kind>`.
DAM_FAULTS: tuple[str, ...] = (
    "missing_image", "corrupt_image", "size_mismatch", "bad_rle", "unsafe_pickle",
    "corrupt_pickle", "no_objects", "bad_record",
)


def write(out_dir: Path, *, n_items: int = 24, seed: int = 0,
          faults: tuple[str, ...] = ()) -> Path:
    """Write a DLC-SFT-style set: splits COCOStuff, LVIS and SAV (frames `{id}.{t}.jpg`),
    two tars per split, pickles of one region dict or a list of them (protocols 2-5,
    counts as str or bytes), a 2x2 region (K = 0) in every third record; plus one record
    per fault kind in COCOStuff."""
    rng = np.random.default_rng(seed)
    shards: dict[str, list[dict[str, bytes]]] = {}
    for i in range(n_items):
        split = _SYNTH_SPLITS[i % len(_SYNTH_SPLITS)]
        shards.setdefault(f"{split}/images/{split}-{i % 2:04d}.tar", []).append(
            _synth_record(rng, i, split))
    for fault in faults:
        shards.setdefault("COCOStuff/images/COCOStuff-0000.tar", []).append(
            _synth_fault(rng, fault))
    for rel, records in shards.items():
        write_tar(out_dir / rel, records)
    return out_dir


_SYNTH_SPLITS = ("COCOStuff", "LVIS", "SAV")
_WORDS = ("A red mug with a chipped rim", "A dog lying on a striped towel",
          "The left wheel of a bicycle", "A tall lamp with a white shade")


def _rle_of(kind: str, shape: tuple, h: int, w: int, *, as_bytes: bool) -> dict:
    seg = common.segmentation(kind, shape, h, w, style=1)
    return {"size": seg["size"],
            "counts": seg["counts"].encode("ascii") if as_bytes else seg["counts"]}


def _synth_record(rng: np.random.Generator, i: int, split: str) -> dict[str, bytes]:
    h, w = common.SIZES[i % len(common.SIZES)]
    shapes = common.random_objects(rng, h, w, int(rng.integers(1, 4)))
    if i % 3 == 0:
        shapes.append(("box", common.tiny_box(h, w)))
    regions = [{"caption": str(rng.choice(_WORDS)) + ".", "img_id": f"{split.lower()}_{i}",
                "mask_rle": _rle_of(kind, shape, h, w, as_bytes=bool(j % 2))}
               for j, (kind, shape) in enumerate(shapes)]
    payload: Any = regions[0] if len(regions) == 1 else regions
    key = f"{split.lower()}_{i:06d}"
    image = common.encode_image(common.make_image(rng, h, w))
    pkl = pickle.dumps(payload, protocol=2 + i % 4)
    if split == "SAV":  # video records: frames {id}.{t}.jpg, the first one is annotated
        later = common.encode_image(common.make_image(rng, h, w))
        return {f"{key}.0.jpg": image, f"{key}.1.jpg": later, f"{key}.pickle": pkl}
    return {f"{key}.jpg": image, f"{key}.pickle": pkl}


def _synth_fault(rng: np.random.Generator, fault: str) -> dict[str, bytes]:
    h, w = 240, 320
    key = f"fault_{fault}"
    image = common.encode_image(common.make_image(rng, h, w))
    rle = _rle_of("box", (20, 30, 120, 200), h, w, as_bytes=False)
    payload: Any = [{"caption": "A box.", "mask_rle": rle}]
    if fault == "size_mismatch":  # RLE size from the record, real image 10 rows shorter
        image = common.encode_image(common.make_image(rng, h - 10, w))
    elif fault == "bad_rle":
        payload[0]["mask_rle"] = common.truncated_rle(rle)
    elif fault == "no_objects":
        payload = []
    elif fault == "bad_record":
        payload = {"caption": "no mask here"}
    pkl = (common.refused_pickle(payload) if fault == "unsafe_pickle"
           else pickle.dumps(payload, protocol=4))
    if fault == "corrupt_pickle":
        pkl = pkl[: len(pkl) // 2]
    members = {f"{key}.pickle": pkl}
    if fault != "missing_image":
        members[f"{key}.jpg"] = image[: len(image) // 3] if fault == "corrupt_image" else image
    return members


def write_tar(path: Path, records: list[dict[str, bytes]]) -> None:
    """A deterministic tar (sorted members, fixed mtime / owner), as WebDataset writes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    members = sorted((name, data) for rec in records for name, data in rec.items())
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
