"""The batch a Sa2VA training step consumes, exactly: tokens, tiles, region prompts, SAM2 inputs.

The consumer's contract (Sa2VA `video_lisa_collate_fn` -> `VideoLLaVASAMModel.forward` ->
`InternVL_Slowfast.forward`), in our words:

- `input_ids` / `labels` are padded per batch (0 / -100); `attention_mask` marks the real
  tokens (from lengths, since a pad id can also be a real token); `position_ids` is
  0..L-1 for every row.
- `pixel_values` holds every 448 tile of every sample, a sample's crops row-major and its
  thumbnail last (a clip: one tile per frame); stacked (B, n, 3, 448, 448) when all samples
  have the same tile count, else a list of (n_i, 3, 448, 448). The model concatenates all
  tiles and writes tile t's 256 features into the next 256 `<IMG_CONTEXT>` slots of the batch.
- `vp_overall_mask` (all tiles of the batch) flags, per sample with region prompts, the tile
  whose features the regions index (an image's thumbnail, a clip's last frame); right after
  that tile's 256 features the model writes, object by object, the features of the cells
  where `prompt_masks[j]` (j-th flagged sample, uint8 (n_obj, 16, 16)) is set, row-major. So
  the text has each tile's block and then that sample's `<vp>` blocks, K slots each.
- Samples that ask for masks (a `[SEG]` per target): `g_pixel_values` (their frames, uint8
  (3, 1024, 1024) each, in a flat list), `frames_per_batch` (frames per such sample) and
  `masks` (per such sample uint8 (n_obj * T, H, W), object-major, at the original size); the
  k-th `[SEG]` of a sample predicts its k-th object.

`encode_sample` runs in the loader workers (after `decode.decode_sample`), `collate_sa2va`
there too, `model_inputs` on the device.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence

from sa2va_shards.config import VisionConfig
from sa2va_shards.errors import SampleError
from sa2va_shards.loader.batch import collate, to_device
from sa2va_shards.loader.encode import IGNORE_INDEX, Encoder

__all__ = ["MODEL_KEYS", "collate_sa2va", "encode_sample", "model_inputs"]

#: keys of the model's input dict (the last six only when some sample needs them).
MODEL_KEYS = ("input_ids", "labels", "attention_mask", "position_ids", "pixel_values",
              "frames_per_batch", "vp_overall_mask", "prompt_masks", "g_pixel_values", "masks")


def encode_sample(sample: dict[str, Any], encoder: Encoder, vision: VisionConfig) -> None:
    """Add `input_ids` / `labels` to a decoded sample and check its token counts:
    `<IMG_CONTEXT>` = tiles x 256 + sum of the prompted regions' K, one `[SEG]` per target.

    Raises:
        EncodeError: too long to keep whole (see `encode`).
        SampleError: `token_count` when the text and the masks disagree (a bug or a bad shard).
    """
    input_ids, labels = encoder(sample["conversation"])
    ids = torch.tensor(input_ids, dtype=torch.long)
    k_vp = sample["k"][-1] if sample["kind"] == "video" else sample["k"]
    want = sample["num_tiles"] * vision.tokens_per_image + (int(k_vp.sum()) if sample["vp"]
                                                           else 0)
    if sample["kind"] == "text":  # a pure-text conversation: its dummy tile has no slots
        want = 0
    have = int((ids == encoder.img_context_id).sum())
    seg = int((ids == encoder.token_ids["[SEG]"]).sum())
    if have != want or seg != sample.get("seg", 0):
        raise SampleError("token_count", f"{have} <IMG_CONTEXT> for {want} slots, {seg} [SEG] for "
                                       f"{sample.get('seg', 0)} targets")
    sample["input_ids"], sample["labels"] = ids, torch.tensor(labels, dtype=torch.long)


def collate_sa2va(samples: list[dict[str, Any]], *, pad_id: int = 0) -> dict[str, Any]:
    """Worker-side batch: the light `collate` batch (uint8 frames, packed masks, progress)
    plus padded `input_ids`, `labels`, `attention_mask`, `position_ids` and the per-sample
    `vp` / `seg` flags; `model_inputs` finishes it on the device."""
    batch = collate(samples)
    real = [s for s in samples if "image" in s]
    if not real:
        return batch
    ids = [s["input_ids"] for s in real]
    lengths = torch.tensor([len(x) for x in ids])
    batch["input_ids"] = pad_sequence(ids, batch_first=True, padding_value=pad_id)
    batch["labels"] = pad_sequence([s["labels"] for s in real], batch_first=True,
                                   padding_value=IGNORE_INDEX)
    width = batch["input_ids"].shape[1]
    batch["attention_mask"] = torch.arange(width)[None] < lengths[:, None]
    batch["position_ids"] = torch.arange(width).repeat(len(real), 1)
    batch["vp"] = torch.tensor([bool(s["vp"]) for s in real])
    batch["seg"] = torch.tensor([int(s.get("seg", 0)) for s in real])
    return batch


def _tiles_per_sample(out: dict[str, Any]) -> list[torch.Tensor]:
    if "tiles" in out:
        return list(out["tiles"].split(out["num_tiles"].tolist()))
    return list(out["pixel_values"].split(out["frames_per_sample"].tolist()))


def model_inputs(batch: dict[str, Any], device: str | torch.device = "cpu", *,
                 vision: VisionConfig | None = None,
                 dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """The model's input dict from a `collate_sa2va` batch, built on `device` (module
    docstring); `keys` (sample keys) rides along for debugging."""
    out = to_device(batch, device, vision=vision, dtype=dtype)
    tiles = _tiles_per_sample(out)
    # a pure-text sample's tile is all zeros: Sa2VA's model skips such tiles (image_flags)
    tiles = [torch.zeros_like(t) if kind == "text" else t
             for t, kind in zip(tiles, out["kind"], strict=True)]
    same = all(t.shape == tiles[0].shape for t in tiles)
    data: dict[str, Any] = {name: out[name] for name in MODEL_KEYS[:4]}
    data["pixel_values"] = torch.stack(tiles) if same else tiles
    vp, seg = out["vp"].tolist(), out["seg"].tolist()
    if any(vp):
        flags = [torch.zeros(len(t), dtype=torch.bool, device=t.device) for t in tiles]
        for f, on in zip(flags, vp, strict=True):
            f[-1] = on
        data["vp_overall_mask"] = torch.cat(flags)
        data["prompt_masks"] = [(pm[-1] if kind == "video" else pm).to(torch.uint8)
                                for pm, kind, on in zip(out["prompt_masks"], out["kind"], vp,
                                                        strict=True) if on]
    frames = out["g_pixel_values"].split(out["frames_per_sample"].tolist())
    data["frames_per_batch"] = [len(f) for f, n in zip(frames, seg, strict=True) if n]
    if any(seg):
        data["g_pixel_values"] = [x for f, n in zip(frames, seg, strict=True) if n for x in f]
        data["masks"] = [_object_major(m, kind) for m, kind, n in
                         zip(out["gt_masks"], out["kind"], seg, strict=True) if n]
    data["keys"] = out.get("keys")
    return data


def _object_major(masks: torch.Tensor, kind: str) -> torch.Tensor:
    """uint8 (n, H, W) for an image; (T, n, H, W) frames of a clip -> (n * T, H, W)."""
    if kind == "video":
        masks = masks.transpose(0, 1).flatten(0, 1)
    return masks.to(torch.uint8)
