"""The slot-filling rule of Sa2VA's model forward, written from `InternVL_Slowfast._llm_forward`
and `VideoLLaVASAMModel.forward` (not from our loader), as provenance labels instead of features:

- tiles: `pixel_values` (5-D, or a list of per-sample tensors) concatenated in batch order;
  a tile whose pixels sum to 0 is no image (`image_flags`, Sa2VA's pure-text rows): no features;
- per tile its 256 features; when `vp_overall_mask[tile]`, right after them the features of
  the next `prompt_masks` entry, object by object, the set cells in row-major order;
- that stream fills the `<IMG_CONTEXT>` positions of `input_ids` row by row;
- `[SEG]` embeddings are split per row, empty rows dropped, and matched in order to
  `frames_per_batch` / `masks` (object-major (n_obj * T, H, W) per sample).
"""

from __future__ import annotations

import torch


def tile_stream(data: dict, tokens: int) -> tuple[list[tuple], list[int]]:
    """Labels of the features the model writes, in order: ("tile", t, cell) or
    ("region", t, object, cell); plus the owning sample of every tile."""
    pv = data["pixel_values"]
    per_sample = list(pv) if isinstance(pv, list) else list(pv.unbind(0))
    owner = [b for b, tiles in enumerate(per_sample) for _ in range(len(tiles))]
    flags = data.get("vp_overall_mask")
    prompts = iter(data.get("prompt_masks") or [])
    stream: list[tuple] = []
    flat = [tile for tiles in per_sample for tile in tiles]
    for t in range(len(owner)):
        if float(flat[t].sum()) == 0:  # image_flags: the model drops the tile's features
            continue
        stream += [("tile", t, c) for c in range(tokens)]
        if flags is not None and bool(flags[t]):
            masks = next(prompts)
            n_obj = len(masks)
            cells = torch.arange(tokens).repeat(n_obj, 1)[masks.reshape(n_obj, -1).bool()]
            counts = masks.reshape(n_obj, -1).bool().sum(1).tolist()
            objs = torch.repeat_interleave(torch.arange(n_obj), torch.tensor(counts))
            stream += [("region", t, int(o), int(c)) for o, c in zip(objs, cells, strict=True)]
    assert next(prompts, None) is None, "prompt_masks left over: more entries than flagged tiles"
    return stream, owner


def fill_slots(data: dict, img_context_id: int, tokens: int) -> list[list[tuple]]:
    """Per row of `input_ids`, the labels its `<IMG_CONTEXT>` slots receive, in order.
    Raises AssertionError where the model would warn and truncate/repeat."""
    stream, _ = tile_stream(data, tokens)
    selected = data["input_ids"] == img_context_id
    assert int(selected.sum()) == len(stream), (
        f"{int(selected.sum())} <IMG_CONTEXT> slots for {len(stream)} features")
    rows, start = [], 0
    for n in selected.sum(1).tolist():
        rows.append(stream[start:start + n])
        start += n
    return rows


def seg_targets(data: dict, seg_id: int) -> list[tuple[int, torch.Tensor]]:
    """(row, its masks (n_obj, T, H, W)) for each row with `[SEG]`, as the model pairs them."""
    counts = (data["input_ids"] == seg_id).sum(1).tolist()
    rows = [r for r, n in enumerate(counts) if n]
    assert len(rows) == len(data.get("masks") or []) == len(data["frames_per_batch"])
    out = []
    for row, masks, frames in zip(rows, data["masks"], data["frames_per_batch"], strict=True):
        n, h, w = masks.shape
        assert n % frames == 0 and n // frames == counts[row], (
            f"row {row}: {counts[row]} [SEG] for masks {tuple(masks.shape)}, {frames} frames")
        out.append((row, masks.reshape(n // frames, frames, h, w)))
    assert len(data.get("g_pixel_values") or []) == sum(data["frames_per_batch"])
    return out
