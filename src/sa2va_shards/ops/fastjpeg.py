"""Optional faster JPEG decode (the `fast` extra, simplejpeg): the same pixels as Pillow's.

Pillow and simplejpeg both run libjpeg-turbo with the accurate integer IDCT and fancy
upsampling, so a stream both decode gives identical RGB (tests/ops/test_fastjpeg.py checks it on
every mode the synth sets hold); simplejpeg skips Pillow's chunked feeding and is 2-3x faster
(docs/benchmarks.md, codec survey). It is only a shortcut: anything it does not decode
strictly (CMYK, MPO, a warning from libjpeg, any error) goes to Pillow, which then decides,
so rejects and every decoded pixel are the same with or without it.
"""

from __future__ import annotations

import numpy as np

try:
    import simplejpeg as _simplejpeg
except ImportError:  # the extra is not installed: Pillow decodes everything
    _simplejpeg = None

__all__ = ["available", "decode_rgb"]

#: Pillow modes whose RGB conversion libjpeg-turbo reproduces (gray: replicated channels).
_MODES = ("RGB", "L")


def available() -> bool:
    """Whether the fast decoder is installed."""
    return _simplejpeg is not None


def decode_rgb(data: bytes, fmt: str | None, mode: str, size: tuple[int, int]) -> np.ndarray | None:
    """(H, W, 3) uint8 of a baseline/progressive JPEG Pillow opened as `fmt`/`mode` with
    `size` (W, H); None where Pillow must decode it (not installed, not a plain JPEG, any
    error or warning)."""
    if _simplejpeg is None or fmt != "JPEG" or mode not in _MODES:
        return None
    try:
        a = _simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
    except ValueError:  # simplejpeg's error for anything libjpeg complains about
        return None
    return a if a.shape == (size[1], size[0], 3) else None
