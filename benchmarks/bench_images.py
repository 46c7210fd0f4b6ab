"""Codec survey: the resized path (source JPEG -> S x S JPEG q95) with each candidate decoder,
resizer and encoder, on the same files, in one run: time per core and difference to Pillow
bicubic from the original.

The set is COCO-like: photo-like JPEGs (q90), 90% at 640x480-class sizes, 10% at 2250x1500.
One thread everywhere (torch, OpenCV), so every rate is per core. For each candidate:

- ms per sample on each size class, and the fraction of the codec floor (decode the source +
  encode one S x S JPEG, Pillow, nothing else) it runs at;
- `resize` difference: its S x S pixels before encoding vs Pillow's bicubic of Pillow's
  decode of the source (mean / max levels over all pixels and channels);
- `stored` difference: the decoded output JPEG vs the same reference. The exact path's
  (`pillow`) stored difference is JPEG q95's own error: a candidate within it loses nothing
  to speed.

Candidates that need a package (simplejpeg, opencv-python-headless) are skipped with a note
when it is not installed. PyTurboJPEG is not surveyed: its PyPI wheel carries no libjpeg-turbo
(it needs a system libturbojpeg >= 3.0), and simplejpeg makes the same libjpeg-turbo calls
(including DCT-domain scaling) from a self-contained wheel.

    python benchmarks/bench_images.py [--small 36 --large 4 --size 1024 --repeats 2]
"""

from __future__ import annotations

import argparse
import io
import os
import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from sa2va_shards import ops
from sa2va_shards.synth import common as _synth

SMALL = ((480, 640), (640, 480), (427, 640), (480, 640), (375, 500), (640, 427))
LARGE = ((1500, 2250),)


def make_set(n_small: int, n_large: int, seed: int = 0) -> dict[str, list[bytes]]:
    """Photo-like JPEG q90 sources by size class (h, w as listed above)."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[bytes]] = {"640x480": [], "2250x1500": []}
    for i in range(n_small):
        h, w = SMALL[i % len(SMALL)]
        out["640x480"].append(_synth.encode_image(_synth.make_image(rng, h, w)))
    for _ in range(n_large):
        h, w = LARGE[0]
        out["2250x1500"].append(_synth.encode_image(_synth.make_image(rng, h, w)))
    return out


# --- candidates: source bytes -> (S x S RGB before encoding, output JPEG bytes) -------------

def _pil_decode(data: bytes) -> np.ndarray:
    """Pillow alone (what the build does without the `fast` extra)."""
    img = Image.open(io.BytesIO(data))
    img.load()
    return ops.to_rgb(img)


def _ops_decode(data: bytes) -> np.ndarray:
    """The build's decode: simplejpeg when the `fast` extra is installed, else Pillow."""
    return ops.decode_image(data, max_pixels=1 << 28)


def _draft_decode(data: bytes, size: int) -> np.ndarray:
    """Pillow's DCT-domain scaled decode: libjpeg scales by 1/2, 1/4 or 1/8 while decoding,
    the largest reduction that keeps both sides >= the target (so only sources >= 2x the target
    on both sides are reduced; an S x S squash of a 2250x1500 source keeps full size)."""
    img = Image.open(io.BytesIO(data))
    img.draft("RGB", (size, size))
    return ops.to_rgb(img)


def before(data: bytes, size: int) -> tuple[np.ndarray, bytes]:
    """The build's path without the extra: Pillow decode, torch uint8 antialias bicubic,
    Pillow encode."""
    small = ops.resize_image(_pil_decode(data), size=size, backend="torch")
    return small, ops.encode_jpeg(small, quality=95)


def current(data: bytes, size: int) -> tuple[np.ndarray, bytes]:
    """The build's path now: `ops.decode_image` (simplejpeg with the `fast` extra), torch
    resize, Pillow encode."""
    small = ops.resize_image(_ops_decode(data), size=size, backend="torch")
    return small, ops.encode_jpeg(small, quality=95)


def floor_fast(data: bytes, size: int) -> tuple[None, bytes]:
    """The codec floor with the fast decode: `ops.decode_image` + encode one S x S JPEG."""
    _ops_decode(data)
    return None, ops.encode_jpeg(_READY[size], quality=95)


def pillow(data: bytes, size: int) -> tuple[np.ndarray, bytes]:
    """`resize_backend: pillow`: Pillow throughout (the reference's own pixels)."""
    small = ops.resize_image(_pil_decode(data), size=size, backend="pillow")
    return small, ops.encode_jpeg(small, quality=95)


def draft(data: bytes, size: int) -> tuple[np.ndarray, bytes]:
    small = ops.resize_image(_draft_decode(data, size), size=size, backend="torch")
    return small, ops.encode_jpeg(small, quality=95)


def _simplejpeg(data: bytes, size: int, *, scaled: bool) -> tuple[np.ndarray, bytes]:
    import simplejpeg

    opts = {"min_height": size, "min_width": size} if scaled else {}
    full = simplejpeg.decode_jpeg(data, colorspace="RGB", **opts)
    small = ops.resize_image(full, size=size, backend="torch")
    # 4:2:0 as Pillow's default (simplejpeg's own default is 4:4:4, ~1.5x the bytes)
    return small, simplejpeg.encode_jpeg(small, quality=95, colorspace="RGB",
                                         colorsubsampling="420")


def simplejpeg_decode(data: bytes, size: int) -> tuple[np.ndarray, bytes]:
    """simplejpeg decode (pixels identical to Pillow's), torch resize, Pillow encode."""
    import simplejpeg

    small = ops.resize_image(simplejpeg.decode_jpeg(data, colorspace="RGB"), size=size)
    return small, ops.encode_jpeg(small, quality=95)


def simplejpeg_torch(data: bytes, size: int) -> tuple[np.ndarray, bytes]:
    """simplejpeg (libjpeg-turbo) decode and encode, torch resize."""
    return _simplejpeg(data, size, scaled=False)


def simplejpeg_scaled(data: bytes, size: int) -> tuple[np.ndarray, bytes]:
    """As above, with libjpeg-turbo's DCT scaling to >= the target (the `draft` rule)."""
    return _simplejpeg(data, size, scaled=True)


def _cv2_resize(full: np.ndarray, size: int) -> np.ndarray:
    import cv2

    h, w = full.shape[:2]
    # OpenCV's cubic is not antialiased: area averaging is its downscaling filter
    interp = cv2.INTER_AREA if size < h and size < w else cv2.INTER_CUBIC
    return cv2.resize(full, (size, size), interpolation=interp)


def opencv_resize(data: bytes, size: int) -> tuple[np.ndarray, bytes]:
    """Pillow decode and encode, OpenCV resize (cubic up, area down)."""
    small = _cv2_resize(_pil_decode(data), size)
    return small, ops.encode_jpeg(small, quality=95)


def opencv(data: bytes, size: int) -> tuple[np.ndarray, bytes]:
    """OpenCV throughout: imdecode, resize, imencode q95."""
    import cv2

    full = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR),
                        cv2.COLOR_BGR2RGB)
    small = _cv2_resize(full, size)
    ok, enc = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, 95])
    return small, enc.tobytes()


CANDIDATES: dict[str, tuple[Callable, str | None]] = {
    "before (Pillow decode, torch resize, Pillow encode)": (before, None),
    "current: `fast` extra (simplejpeg decode), torch resize, Pillow encode": (current,
                                                                               "simplejpeg"),
    "pillow (exact: Pillow decode, resize, encode)": (pillow, None),
    "Pillow draft() scaled decode + torch + Pillow": (draft, None),
    "simplejpeg decode + torch resize + Pillow encode": (simplejpeg_decode, "simplejpeg"),
    "simplejpeg decode/encode + torch resize": (simplejpeg_torch, "simplejpeg"),
    "simplejpeg scaled decode/encode + torch resize": (simplejpeg_scaled, "simplejpeg"),
    "Pillow decode/encode + OpenCV resize": (opencv_resize, "cv2"),
    "OpenCV decode/resize/encode": (opencv, "cv2"),
}


def floor(data: bytes, size: int) -> tuple[None, bytes]:
    """The codec floor: decode the source + encode one S x S JPEG q95 (Pillow), nothing else."""
    _pil_decode(data)
    return None, ops.encode_jpeg(_READY.setdefault(size, np.full((size, size, 3), 128, np.uint8)
                                                   if size not in _READY else _READY[size]),
                                 quality=95)


_READY: dict[int, np.ndarray] = {}


def _times(fns: dict[str, Callable], files: list[bytes], size: int,
           repeats: int) -> dict[str, float]:
    """Best ms per sample of each function over `repeats` rounds; the functions take turns
    within a round, so load from other processes hits them alike."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for data in files:
                fn(data, size)
            best[name] = min(best[name], (time.perf_counter() - t0) / len(files) * 1e3)
    return best


def _diff(fn: Callable, files: list[bytes], refs: list[np.ndarray],
          size: int) -> tuple[float, int, float, int]:
    """(resize mean, resize max, stored mean, stored max) levels vs the references."""
    rs, ss, rmax, smax, n = 0.0, 0.0, 0, 0, 0
    for data, ref in zip(files, refs, strict=True):
        small, jpeg = fn(data, size)
        stored = _pil_decode(jpeg)
        dr = np.abs(small.astype(np.int16) - ref)
        ds = np.abs(stored.astype(np.int16) - ref)
        rs, ss, n = rs + float(dr.sum()), ss + float(ds.sum()), n + dr.size
        rmax, smax = max(rmax, int(dr.max())), max(smax, int(ds.max()))
    return rs / n, rmax, ss / n, smax


def _available(module: str | None) -> bool:
    if module is None:
        return True
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", type=int, default=36)
    ap.add_argument("--large", type=int, default=4)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass
    sets = make_set(args.small, args.large)
    refs = {k: [np.asarray(Image.open(io.BytesIO(d)).convert("RGB").resize(
        (args.size, args.size), Image.Resampling.BICUBIC)).astype(np.int16) for d in files]
        for k, files in sets.items()}
    # the floor encodes a real photo's squash, as the candidates do
    _READY[args.size] = ops.resize_image(_pil_decode(sets["640x480"][0]), size=args.size)
    fns = {"floor": floor, "floor_fast": floor_fast,
           **{n: fn for n, (fn, mod) in CANDIDATES.items() if _available(mod)}}
    times = {k: _times(fns, files, args.size, args.repeats) for k, files in sets.items()}
    print(f"load average {os.getloadavg()[0]:.1f}; target {args.size}; one thread; "
          f"{', '.join(f'{len(v)} x {k}' for k, v in sets.items())}; best of "
          f"{args.repeats} interleaved rounds\n")
    classes = list(sets)
    head = " | ".join(f"{k}: ms/sample (x floor)" for k in classes)
    print(f"| candidate | {head} | resize diff mean / max | stored diff mean / max |")
    print("|---|" + "---|" * (len(classes) + 2))
    print("| codec floor (Pillow decode src + encode 1 JPEG) | " + " | ".join(
        f"{times[k]['floor']:.2f} (1.00x)" for k in classes) + " | - | - |")
    print("| codec floor with the `fast` decode | " + " | ".join(
        f"{times[k]['floor_fast']:.2f} ({times[k]['floor'] / times[k]['floor_fast']:.2f}x)"
        for k in classes) + " | - | - |")
    total = sum(len(v) for v in sets.values())
    for name, (fn, module) in CANDIDATES.items():
        if name not in fns:
            print(f"| {name} | not installed ({module}) |")
            continue
        cells = [f"{times[k][name]:.2f} ({times[k]['floor'] / times[k][name]:.2f}x)"
                 for k in classes]
        d = {k: _diff(fn, sets[k], refs[k], args.size) for k in classes}
        rm = sum(d[k][0] * len(sets[k]) for k in classes) / total
        sm = sum(d[k][2] * len(sets[k]) for k in classes) / total
        print(f"| {name} | {' | '.join(cells)} | {rm:.3f} / {max(x[1] for x in d.values())} "
              f"| {sm:.3f} / {max(x[3] for x in d.values())} |")


if __name__ == "__main__":
    main()
