"""Shared helpers for the readers' `synth`: photo-like images and object shapes whose correct
outputs can be derived (rectangles, ellipses, a few-pixel object that no grid point hits)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

__all__ = [
    "SIZES",
    "ellipse_polygon",
    "encode_image",
    "make_image",
    "random_objects",
    "tiny_box",
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


def encode_image(rgb: np.ndarray, *, mode: str = "RGB", fmt: str = "JPEG") -> bytes:
    """Encode an RGB array in a Pillow `mode` (RGB, L, CMYK, P, RGBA, LA, I;16)."""
    img = Image.fromarray(rgb)
    if mode == "I;16":
        gray = np.asarray(img.convert("L")).astype(np.uint16) * 257
        img = Image.fromarray(gray)
    elif mode == "P":
        img = img.quantize(64)
    elif mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
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
