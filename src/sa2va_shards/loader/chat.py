"""Loader side of conversation-only samples (LLaVA-665K, Chat-UniVi): task `chat`.

Such a sample has no objects: the decoded sample carries the same fields as every other one
(so a batch can mix it with mask samples), with zero-length prompt masks, K and GT masks, no
`[SEG]` and no region prompt. Its text is the stored dialogue, built as Sa2VA's LLaVA and
Chat-UniVi datasets build it:

- leading answers are skipped, consecutive questions joined, a question left without an answer
  dropped; answers are stripped of surrounding spaces.
- image row: the `<image>` tag is replaced by the image block (`<img>` + tiles x 256
  `<IMG_CONTEXT>` + `</img>`) and the question stripped; a row with an image but no tag gets
  the block and a newline before its first question (Sa2VA would feed the tiles with no slot).
- video: `<image>` tags are removed and the first question starts with one image block per
  frame, joined by newlines; nothing is stripped (Sa2VA's Chat-UniVi text is used as stored).
- pure text (kind `text`): `<image>` tags are removed; the model gets one all-zero tile, which
  Sa2VA's model recognises as no image (its `image_flags` = any non-zero pixel) and whose
  features it never writes: no `<IMG_CONTEXT>` at all.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sa2va_shards.errors import SampleError
from sa2va_shards.loader.decode import (
    _add_stored_tiles,
    _check_meta,
    _decode_images,
    _prompt_and_k,
    sample_frames,
    set_tile_grid,
)
from sa2va_shards.loader.prompts import image_prompt

__all__ = ["chat_turns", "decode_chat", "is_chat"]

IMAGE_TAG = "<image>"


def is_chat(meta: Any) -> bool:
    """Whether a sample's json is a conversation-only sample."""
    return isinstance(meta, dict) and bool(meta.get("chat"))


def chat_turns(turns: list[dict], kind: str, image: str) -> list[dict[str, str]]:
    """The stored turns as {input, output} pairs (module docstring); `image` is the picture's
    token block ("" for pure text)."""
    messages = list(turns)
    while messages and messages[0].get("from") == "gpt":
        messages = messages[1:]
    if kind == "image" and not any(IMAGE_TAG in m["value"] for m in messages
                                   if m["from"] == "human"):
        first = next(i for i, m in enumerate(messages) if m["from"] == "human")
        messages[first] = {**messages[first], "value": IMAGE_TAG + "\n" +
                           messages[first]["value"].strip()}
    keep = (lambda v: v) if kind == "video" else str.strip
    out, question, first = [], "", True
    for m in messages:
        value = m["value"]
        if m["from"] == "human":
            if kind == "image" and IMAGE_TAG in value:
                value = value.replace(IMAGE_TAG, image)
            else:
                value = value.replace(IMAGE_TAG, "")
            if kind == "video" and first:
                value = image + value
            first = False
            question += keep(value)
        else:
            out.append({"input": question, "output": keep(value)})
            question = ""
    if not out:
        raise SampleError("bad_dialogue", "no question/answer pair in the stored dialogue")
    return out


def _empty_gt(lead: tuple[int, ...], h: int, w: int, packed: bool) -> torch.Tensor:
    shape = (*lead, 0, w, (h + 7) // 8) if packed else (*lead, 0, h, w)
    return torch.zeros(shape, dtype=torch.uint8)


def _picture(raw: dict, meta: dict, kind: str, cfg: Any,
             rng: np.random.Generator) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
    """(images (T, S, S, 3) uint8, chosen frames, prompt masks, K) of the sample."""
    as_kind = "image" if kind == "text" else kind
    prompt, k = _prompt_and_k(raw, meta, as_kind, cfg.vision.grid)
    if kind == "text":  # the dummy picture: all zeros (see the module docstring)
        size = cfg.image_size
        return torch.zeros((1, size, size, 3), dtype=torch.uint8), np.zeros(1, int), prompt, k
    stored = prompt.shape[0] if kind == "video" else 1
    frames = sample_frames(stored, cfg.frames, rng) if kind == "video" else np.zeros(1, int)
    if kind == "video":
        prompt, k = prompt[frames], k[frames]
    return _decode_images(raw, kind, cfg.image_size, frames, stored), frames, prompt, k


def decode_chat(raw: dict[str, Any], meta: dict, cfg: Any,
                rng: np.random.Generator) -> dict[str, Any]:
    """A conversation-only shard sample -> a training sample (see `decode.decode_sample`)."""
    kind = meta.get("kind", "image")
    _check_meta({**meta, "kind": "image" if kind == "text" else kind}, cfg)
    if cfg.task not in ("chat", "mixed"):
        raise SampleError("task_not_served", f"the sample cannot serve {cfg.task}", corrupt=False)
    turns = meta.get("conversations")
    if not isinstance(turns, list) or not all(isinstance(t, dict) and isinstance(
            t.get("value"), str) and t.get("from") in ("human", "gpt") for t in turns):
        raise SampleError("bad_dialogue", "conversations is not a list of human/gpt text turns")
    images, frames, prompt, k = _picture(raw, meta, kind, cfg, rng)
    sample = {"kind": kind, "task": "chat", "meta": meta, "image": images,
              "frame_index": frames.tolist(), "object_index": [], "objects": [],
              "prompt_masks": torch.from_numpy(np.ascontiguousarray(prompt)),
              "k": torch.from_numpy(k.astype(np.int64)), "texts": [], "vp": False, "seg": 0}
    lead = (len(frames),) if kind == "video" else ()
    packed = cfg.gt_format == "packed"
    if cfg.gt_masks in ("image", "both"):
        sample["image_masks"] = _empty_gt(lead, cfg.image_size, cfg.image_size, packed)
    if cfg.gt_masks in ("full", "both"):
        sample["gt_masks"] = _empty_gt(lead, int(meta.get("height", 0)),
                                       int(meta.get("width", 0)), packed)
    _text(sample, meta, kind, cfg)
    if kind == "image":
        _add_stored_tiles(sample, raw, meta, cfg)
    return sample


def _text(sample: dict, meta: dict, kind: str, cfg: Any) -> None:
    n_tiles = set_tile_grid(sample, meta, cfg)
    tokens = cfg.vision.tokens_per_image
    sample["num_tiles"] = len(sample["image"]) if kind == "video" else n_tiles
    if kind == "video":
        image = "\n".join(image_prompt(tokens) for _ in range(len(sample["image"])))
    else:
        image = image_prompt(tokens, n_tiles=n_tiles) if kind == "image" else ""
    sample["conversation"] = chat_turns(meta["conversations"], kind, image)
