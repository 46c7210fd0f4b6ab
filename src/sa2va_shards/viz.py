"""Pictures a person can check: a sample's masks and its 16x16 prompt grid with K."""

from __future__ import annotations

import difflib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from sa2va_shards import ops
from sa2va_shards.errors import ConfigError
from sa2va_shards.format import (
    GT_MASKS,
    IMAGE,
    MASKS,
    META,
    PROMPT_MASKS,
    K,
    decode_json,
    decode_npy,
    image_members,
    iter_samples,
)
from sa2va_shards.manifest import read_manifest

__all__ = ["load_sample", "render_overlay", "render_stats"]

_COLORS = np.array([
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
], dtype=np.uint8)


def load_sample(build_dir: str | Path, key: str | None = None) -> dict[str, bytes]:
    """Raw members of sample `key` (default: the first sample with the most objects).

    Raises:
        ConfigError: no such key (with the closest keys), or a build with no samples.
    """
    build_dir = Path(build_dir)
    rows = read_manifest(build_dir, "samples.parquet").to_pylist()
    if not rows:
        raise ConfigError(f"{build_dir}: the build has no samples to show")
    if key is None:
        key = max(rows, key=lambda r: (r["n_obj"], -rows.index(r)))["key"]
    row = next((r for r in rows if r["key"] == key), None)
    if row is None:
        keys = [r["key"] for r in rows]
        close = difflib.get_close_matches(key, keys, n=3) or keys[:3]
        raise ConfigError(f"{build_dir}: no sample with key {key!r}; e.g. {', '.join(close)} "
                          "(every key: the `key` column of samples.parquet)")
    members = next(m for k, m in iter_samples(build_dir / "shards" / row["shard"]) if k == key)
    return {**members, "__key__": key.encode()}


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _mask_panel(image: np.ndarray, masks: np.ndarray) -> Image.Image:
    out = image.astype(np.float32)
    for i, m in enumerate(masks):
        sel = m.astype(bool)
        out[sel] = 0.5 * out[sel] + 0.5 * _COLORS[i % len(_COLORS)]
    return Image.fromarray(out.astype(np.uint8))


def _ring_small_objects(panel: Image.Image, masks: np.ndarray, k: np.ndarray) -> None:
    """Circle every K = 0 object: a few pixels that no grid point hits are invisible otherwise."""
    draw, scale = ImageDraw.Draw(panel), panel.width / masks.shape[-1]
    for i in np.flatnonzero(k == 0):
        ys, xs = np.nonzero(masks[i])
        if ys.size == 0:
            continue
        cy, cx = ys.mean() * scale, xs.mean() * scale
        color = tuple(int(c) for c in _COLORS[i % len(_COLORS)])
        for r, c in ((22, (255, 255, 255)), (19, color)):
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=c, width=3)


def _grid_panel(image: np.ndarray, prompt: np.ndarray, side: int) -> Image.Image:
    grid = prompt.shape[-1]
    cell = side // grid
    base = Image.fromarray(image).resize((cell * grid, cell * grid), Image.Resampling.BILINEAR)
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    for i, pm in enumerate(prompt):
        color = tuple(int(c) for c in _COLORS[i % len(_COLORS)])
        for r, c in np.argwhere(pm):
            inset = 2 + 3 * (i % 3)  # overlapping objects stay distinguishable
            box = [c * cell + inset, r * cell + inset, (c + 1) * cell - inset,
                   (r + 1) * cell - inset]
            # a white halo keeps the outline visible over the object's own tint
            draw.rectangle(box, outline=(255, 255, 255, 255), width=5)
            draw.rectangle(box, outline=color + (255,), width=2)
    for j in range(grid + 1):
        draw.line([(j * cell, 0), (j * cell, grid * cell)], fill=(255, 255, 255, 110))
        draw.line([(0, j * cell), (grid * cell, j * cell)], fill=(255, 255, 255, 110))
    return Image.alpha_composite(base.convert("RGBA"), layer).convert("RGB")


def _outline(panel: Image.Image, masks: np.ndarray) -> Image.Image:
    """Draw each mask's boundary (its colour on a white halo) on `panel`: the edge shows
    whether the mask sits on the object in the frame (a tint alone hides a shift)."""
    side = panel.width
    idx = (np.arange(side) * masks.shape[-1]) // side  # nearest, to the panel size
    m = masks[:, idx[:, None], idx[None, :]].astype(bool)
    inner = m.copy()
    inner[:, 1:] &= m[:, :-1]
    inner[:, :-1] &= m[:, 1:]
    inner[:, :, 1:] &= m[:, :, :-1]
    inner[:, :, :-1] &= m[:, :, 1:]
    edge = m & ~inner
    out = np.asarray(panel).copy()
    for i, e in enumerate(edge):
        halo = e.copy()
        halo[1:] |= e[:-1]
        halo[:-1] |= e[1:]
        halo[:, 1:] |= e[:, :-1]
        halo[:, :-1] |= e[:, 1:]
        out[halo] = 255
        out[e] = _COLORS[i % len(_COLORS)]
    return Image.fromarray(out)


def _video_frame_panel(frame: np.ndarray, masks: np.ndarray, prompt: np.ndarray, k: np.ndarray,
                       side: int) -> Image.Image:
    """One frame: masks tinted and outlined, the object's grid cells, K = 0 objects ringed."""
    panel = _outline(_grid_panel(np.asarray(_mask_panel(frame, masks)), prompt, side), masks)
    _ring_small_objects(panel, masks, k)
    return panel


def _render_video(m: dict[str, bytes], meta: dict, out: Path, side: int = 384,
                  max_frames: int = 4) -> Path:
    """A strip of frames: each the 1024 frame with its masks tinted and outlined and the
    object's grid cells boxed (the seed's frame/mask alignment check), K per object below."""
    names = image_members(m)
    frames = [ops.decode_image(m[name], max_pixels=1 << 30) for name in names[:max_frames]]
    size = frames[0].shape[0]
    rles = decode_json(m[MASKS])
    prompt, k = decode_npy(m[PROMPT_MASKS]), decode_npy(m[K])
    n_obj = prompt.shape[1]
    side = side // prompt.shape[-1] * prompt.shape[-1]  # whole grid cells
    font = _font(18)
    title = (f"{meta['dataset']} / {m['__key__'].decode()}  {meta['width']}x{meta['height']} -> "
             f"{size}, frames {len(frames)} of {len(names)} shown. Outline: mask; boxed: the "
             f"{prompt.shape[-1]}x{prompt.shape[-1]} cells whose top-left pixel is in the mask")
    width = max(len(frames) * (side + 10) + 10, int(font.getlength(title)) + 20)
    canvas = Image.new("RGB", (width, side + 96 + 24 * n_obj), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((10, 8), title, fill="black", font=font)
    for t, frame in enumerate(frames):
        masks = ops.rle_decode(rles[t], height=size, width=size)
        x = 10 + t * (side + 10)
        canvas.paste(_video_frame_panel(frame, masks, prompt[t], k[t], side), (x, 36))
        draw.text((x, side + 42), f"frame {meta['frame_indices'][t]}", fill="black", font=font)
        for i in range(n_obj):
            y = side + 66 + 24 * i
            draw.rectangle([x, y + 3, x + 16, y + 19],
                           fill=tuple(int(c) for c in _COLORS[i % len(_COLORS)]))
            absent = "  (absent)" if not masks[i].any() else ""
            draw.text((x + 24, y), f"region{i + 1}  K = {int(k[t, i])}{absent}", fill="black",
                      font=font)
    canvas.save(out)
    return out


def render_overlay(build_dir: str | Path, out: str | Path, *, key: str | None = None,
                   side: int = 768) -> Path:
    """Write a PNG: left, the 1024 image with each 1024 mask tinted; right, the image with the
    16x16 vision-token grid and each object's prompt cells outlined; below, K per region.
    For a video clip: a strip of frames, each with its masks and grid cells."""
    m = load_sample(build_dir, key)
    meta = decode_json(m[META])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if meta.get("kind") == "video":
        return _render_video(m, meta, out)
    if meta.get("kind") == "text":  # a pure-text conversation has no picture to draw on
        raise ConfigError(f"{build_dir}: sample {meta['source_id']} is text only (no image)")
    image = ops.decode_image(m[IMAGE], max_pixels=1 << 30)
    size = int(meta.get("size", image.shape[0]))
    if image.shape[:2] != (size, size):  # a kept source (`image.store`): the SAM2 input
        image = ops.resize_image(image, size=size)
    masks = ops.rle_decode(decode_json(m[MASKS]), height=size, width=size)
    prompt, k = decode_npy(m[PROMPT_MASKS]), decode_npy(m[K])
    left = _mask_panel(image, masks).resize((side, side), Image.Resampling.BILINEAR)
    _ring_small_objects(left, masks, k)
    right = _grid_panel(image, prompt, side)
    legend_h = 40 + 26 * len(k)
    canvas = Image.new("RGB", (left.width + right.width + 30, side + legend_h), "white")
    canvas.paste(left, (10, 10))
    canvas.paste(right, (left.width + 20, 10))
    draw, font = ImageDraw.Draw(canvas), _font(20)
    title = (f"{meta['dataset']} / {m['__key__'].decode()}  {meta['width']}x{meta['height']} -> "
             f"{size}, grid {prompt.shape[-1]}x{prompt.shape[-1]}")
    draw.text((10, side + 14), title, fill="black", font=font)
    for i, (obj, kv) in enumerate(zip(meta["objects"], k, strict=True)):
        color = tuple(int(c) for c in _COLORS[i % len(_COLORS)])
        y = side + 40 + 26 * i
        draw.rectangle([10, y + 3, 28, y + 21], fill=color)
        flag = "  (K = 0: no grid point hits it)" if kv == 0 else ""
        flag += "  (fallback cell)" if obj.get("k_fallback") else ""
        label = obj.get("category") or obj.get("caption") or obj.get("phrase") or ""
        draw.text((36, y), f"region{i + 1}  {label}  K = {int(kv)}{flag}", fill="black",
                  font=font)
    canvas.save(out)
    return out


def _areas_vs_k(build_dir: Path, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """(object area as a fraction of its image, K) for up to `limit` samples, from the shards."""
    areas, ks, seen = [], [], 0
    for tar_path in sorted((build_dir / "shards").glob("*.tar")):
        for _, m in iter_samples(tar_path, names=(GT_MASKS, K)):
            rles = decode_json(m[GT_MASKS])
            k = decode_npy(m[K])
            if k.ndim != 1 or not rles:  # video: areas per frame do not line up with one K;
                continue  # a conversation-only sample has no objects
            h, w = rles[0]["size"]
            areas.append(ops.runs_area(*ops.rle_to_runs(rles)) / (h * w))
            ks.append(k)
            seen += 1
            if seen >= limit:
                return np.concatenate(areas), np.concatenate(ks)
    return (np.concatenate(areas), np.concatenate(ks)) if areas else (np.zeros(0), np.zeros(0))


def render_stats(build_dirs: list[str | Path], out: str | Path, *, limit: int = 2000) -> Path:
    """Write a PNG with, per build: the K histogram, the K = 0 rate, objects per image, and
    object area vs K (the K = 0 objects are the small ones)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    (ax_k, ax_zero), (ax_obj, ax_area) = axes
    names, zero_rates = [], []
    for i, d in enumerate(map(Path, build_dirs)):
        rows = read_manifest(d, "samples.parquet", columns=["k", "n_obj"]).to_pylist()
        ks = np.array([k for r in rows for k in r["k"]], dtype=np.int64)
        name = f"{d.parent.name}/{d.name}"
        color = _COLORS[i % len(_COLORS)] / 255
        names.append(name)
        zero_rates.append(float((ks == 0).mean()) if ks.size else 0.0)
        ax_k.hist(ks, bins=np.arange(0, 258, 4), histtype="step", lw=2, color=color, label=name)
        n_obj = [r["n_obj"] for r in rows]
        ax_obj.hist(n_obj, bins=np.arange(0, max(n_obj, default=0) + 3) - 0.5,
                    histtype="step", lw=2, color=color, label=name)
        area, k = _areas_vs_k(d, limit)
        ax_area.scatter(np.maximum(area, 1e-7), k, s=6, alpha=0.5, color=color, label=name)
    ax_k.set(title="K per object (set cells of the 16x16 grid)", xlabel="K", ylabel="objects")
    ax_zero.bar(range(len(names)), zero_rates, color=[_COLORS[i % 10] / 255
                                                       for i in range(len(names))])
    ax_zero.set_xticks(range(len(names)), names, rotation=15, fontsize=8)
    ax_zero.set(title="K = 0 rate (objects no grid point hits)", ylabel="fraction of objects")
    for x, r in enumerate(zero_rates):
        ax_zero.text(x, r, f"{100 * r:.1f}%", ha="center", va="bottom")
    ax_obj.set(title="objects per image", xlabel="objects", ylabel="images")
    ax_area.set(title="object area vs K", xlabel="area / image area", ylabel="K", xscale="log")
    for ax in (ax_k, ax_obj, ax_area):
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
