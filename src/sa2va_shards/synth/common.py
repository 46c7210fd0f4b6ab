"""Shared helpers of the synthesisers: photo-like images and object shapes whose correct
outputs can be derived (rectangles, ellipses, a few-pixel object that no grid point hits)."""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

__all__ = [
    "BAD_POLYGON",
    "SIZES",
    "box_mask",
    "ellipse_polygon",
    "encode_image",
    "make_image",
    "random_objects",
    "refused_pickle",
    "rle_runs",
    "segmentation",
    "shape_mask",
    "tiny_box",
    "truncated_rle",
]

#: (H, W) of synthetic images: COCO-like, odd, tall, wide, and smaller than the grid.
SIZES: tuple[tuple[int, int], ...] = (
    (480, 640), (427, 640), (333, 500), (640, 480), (375, 500), (231, 777), (900, 601), (15, 11),
)


def make_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) uint8: smooth gradients plus blobs and mild noise (JPEG sizes like photos)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([
        127 + 100 * np.sin(x / max(w, 1) * rng.uniform(2, 6) + rng.uniform(0, 6)),
        127 + 100 * np.cos(y / max(h, 1) * rng.uniform(2, 6) + rng.uniform(0, 6)),
        127 + 80 * np.sin((x + y) / max(h + w, 1) * rng.uniform(2, 8)),
    ], axis=2)
    noise = rng.normal(0, 4, size=(h, w, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def encode_image(rgb: np.ndarray, *, mode: str = "RGB", fmt: str = "JPEG",
                 exif_orientation: int | None = None) -> bytes:
    """Encode an RGB array in a Pillow `mode` (RGB, L, CMYK, P, RGBA, LA, I;16), optionally
    with an EXIF orientation tag (which readers must ignore)."""
    img = Image.fromarray(rgb)
    if mode == "I;16":
        gray = np.asarray(img.convert("L")).astype(np.uint16) * 257
        img = Image.fromarray(gray)
    elif mode == "P":
        img = img.quantize(64)
    elif mode != "RGB":
        img = img.convert(mode)
    kwargs: dict = {"quality": 90} if fmt == "JPEG" else {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def ellipse_polygon(cx: float, cy: float, rx: float, ry: float, n: int = 24) -> list[float]:
    """A flat COCO polygon [x0, y0, x1, y1, ...] approximating an ellipse."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    pts = np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)
    return [round(float(v), 2) for v in pts.reshape(-1)]


def box_mask(h: int, w: int, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    """(h, w) uint8 {0,1} with rows [y0, y1) and columns [x0, x1) set."""
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def tiny_box(h: int, w: int) -> tuple[int, int, int, int]:
    """A 2x2 box strictly inside the first grid cell (no 16x16 sample point hits it)."""
    return 1, 1, min(3, h), min(3, w)


def random_objects(rng: np.random.Generator, h: int, w: int, n: int) -> list[tuple[str, tuple]]:
    """`n` object shapes: ('ellipse', (cx, cy, rx, ry)) or ('box', (y0, x0, y1, x1)),
    from large to small."""
    shapes = []
    for _ in range(n):
        frac = rng.choice([0.4, 0.2, 0.08, 0.03])
        rh, rw = max(1.0, h * frac), max(1.0, w * frac)
        cy, cx = rng.uniform(rh, max(rh + 1, h - rh)), rng.uniform(rw, max(rw + 1, w - rw))
        if rng.random() < 0.5:
            shapes.append(("ellipse", (cx, cy, rw, rh)))
        else:
            y0, x0 = int(max(0, cy - rh)), int(max(0, cx - rw))
            shapes.append(("box", (y0, x0, int(min(h, cy + rh)) + 1, int(min(w, cx + rw)) + 1)))
    return shapes


def rle_runs(m: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE counts of an (H, W) {0,1} mask (column-major runs, first run of 0s,
    as COCO stores crowd regions)."""
    flat = m.reshape(-1, order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    edges = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(edges).tolist()
    return ([0] + runs) if flat[0] == 1 else runs


def shape_mask(kind: str, shape: tuple, h: int, w: int) -> np.ndarray:
    """(h, w) uint8 {0,1} for ('ellipse', (cx, cy, rx, ry)) or ('box', (y0, x0, y1, x1))."""
    if kind == "box":
        return box_mask(h, w, *shape)
    cx, cy, rx, ry = shape
    y, x = np.mgrid[0:h, 0:w]
    return (((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1).astype(np.uint8)


def segmentation(kind: str, shape: tuple, h: int, w: int, *, style: int) -> dict | list:
    """A COCO segmentation of a shape in one of the three published encodings.

    Args:
        kind, shape: as returned by `random_objects`.
        style: 0 polygon (ellipses only; boxes fall back to compressed RLE), 1 compressed RLE
            (str counts), 2 uncompressed RLE (list counts).
    """
    if style == 0 and kind == "ellipse":
        return [ellipse_polygon(*shape)]
    m = shape_mask(kind, shape, h, w)
    if style == 2:
        return {"size": [h, w], "counts": rle_runs(m)}
    rle = mask_utils.encode(np.asfortranarray(m))
    return {"size": [h, w], "counts": rle["counts"].decode("ascii")}


def truncated_rle(seg: dict) -> dict:
    """A compressed RLE made malformed (cut in half, garbage tail): a `bad_segmentation`."""
    counts = seg["counts"]
    return {"size": list(seg["size"]), "counts": counts[: len(counts) // 2] + "zz"}


#: a polygon with two points: pycocotools cannot rasterise it (a `bad_segmentation`).
BAD_POLYGON: list[list[float]] = [[10.0, 10.0, 50.0, 50.0]]


def refused_pickle(data: Any) -> bytes:
    """`data` inside a `collections.OrderedDict`: the `unsafe_pickle` fault. The pickle names a
    class, so the readers' restricted unpickler must refuse it (as it refuses any global outside
    its allow-list, `os.system` included); loaded by plain `pickle` it only builds a dict, so the
    installed package ships no code-running pickle (the tests build a real exploit)."""
    return pickle.dumps(OrderedDict(data=data), protocol=2)
