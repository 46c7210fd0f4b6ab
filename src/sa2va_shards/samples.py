"""One shard sample -> one training sample: safe member decode, object choice, task text.

Runs in DataLoader workers. Workers return uint8 images and bit-packed masks, never float
tensors: shipping big tensors between processes is the loader's bottleneck (reference/env.md),
so the 448 resize, normalisation and mask unpacking happen in `device.to_device`.

Image samples (`json` "kind": "image", or no kind) hold `jpg`; video samples ("kind": "video")
hold `f0000.jpg`, `f0001.jpg`, ... with prompt masks (T, n, G, G), K (T, n) and RLE lists over
frames of lists over objects. Only the members named here are read; `.npy` is loaded with
allow_pickle off, images with Pillow under a pixel budget, RLEs checked before pycocotools sees
them (it decodes without bounds checks).
"""

from __future__ import annotations

import io
import json
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.lib import format as npformat

from sa2va_shards import ops
from sa2va_shards.device import dynamic_grid, tile_count
from sa2va_shards.errors import SampleError
from sa2va_shards.prompts import image_prompt, regions_header

__all__ = [
    "FRAME_MEMBER",
    "TEXT_FIELDS",
    "LoadError",
    "Wording",
    "decode_sample",
    "wanted_member",
]

#: video frame members: f0000.jpg, f0001.jpg, ...
FRAME_MEMBER = re.compile(r"f\d{4}\.(jpg|png)")
_BASE_MEMBERS = {"jpg", "png", "json", "prompt_masks.npy", "k.npy"}

#: object fields searched, in order, for the object's text (str or list of str).
TEXT_FIELDS = ("caption", "description", "expression", "expressions", "sentences", "captions",
               "category")

@dataclass(frozen=True, kw_only=True)
class Wording:
    """Question and answer templates of the conversations the loader builds (our own wording).

    The structure follows Sa2VA (a random question per turn, `<` and `>` removed from region
    answers, one `[SEG]` per referred object); the sentences are ours. To train on exactly the
    text of another recipe, pass its lists here: the loader ships no third-party text.
    """

    #: region captioning questions; `{region}` becomes `region1`, `region2`, ...
    region_questions: tuple[str, ...] = (
        "Describe {region} in detail.",
        "What does {region} show? Give a detailed description.",
        "Give a thorough description of the area marked {region}.",
        "Explain what is inside {region} in this image.",
        "Write a detailed caption for {region}.",
        "Tell me about {region} in the picture.",
    )
    #: referring segmentation questions; `{phrase}` becomes the object's text.
    seg_questions: tuple[str, ...] = (
        "Segment the {phrase}.",
        "Where is the {phrase}? Answer with a mask.",
        "Give the segmentation mask of the {phrase}.",
        "Find the {phrase} in the image and segment it.",
        "Which pixels belong to the {phrase}? Reply with a mask.",
    )
    #: referring segmentation answers, each with exactly one `[SEG]`.
    seg_answers: tuple[str, ...] = ("[SEG].", "Here is the mask: [SEG].",
                                    "This is it: [SEG].")

    def __post_init__(self) -> None:
        for name in ("region_questions", "seg_questions", "seg_answers"):
            if not getattr(self, name):
                raise ValueError(f"Wording.{name} must not be empty")
        if any(a.count("[SEG]") != 1 for a in self.seg_answers):
            raise ValueError("every seg answer needs exactly one [SEG]")


class LoadError(Exception):
    """A shard sample that cannot be used; `reason` is the stats counter it is counted under.

    `corrupt=False` marks a sample that is intact but has nothing to serve under the loader's
    policy (e.g. every object has K = 0 and `k_zero='drop'`): counted, not warned about, and
    never an error under `strict`.
    """

    def __init__(self, reason: str, detail: str, *, corrupt: bool = True) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.corrupt = corrupt


def wanted_member(suffix: str, *, gt_masks: str) -> bool:
    """Whether a member suffix is read at all (unknown members are skipped unread)."""
    if suffix in _BASE_MEMBERS or FRAME_MEMBER.fullmatch(suffix):
        return True
    if suffix == "masks_1024.json":
        return gt_masks in ("1024", "both")
    return suffix == "gt_masks.json" and gt_masks in ("full", "both")


def _member(raw: dict[str, Any], name: str) -> bytes:
    if name not in raw:
        raise LoadError("missing_member", f"no {name!r} member")
    return raw[name]


def _json(raw: dict[str, Any], name: str) -> Any:
    try:
        return json.loads(_member(raw, name).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LoadError("bad_json", f"{name}: {e}") from e


def _npy(raw: dict[str, Any], name: str) -> np.ndarray:
    """A `.npy` member, read only after its header checks out: no object dtype (that would
    need unpickling) and a shape whose size is exactly the bytes present (a corrupt header
    cannot make us allocate a huge array). Read-only view, no copy."""
    data = _member(raw, name)
    buf = io.BytesIO(data)
    try:
        version = npformat.read_magic(buf)
        read_header = (npformat.read_array_header_1_0 if version == (1, 0)
                       else npformat.read_array_header_2_0)
        shape, fortran, dtype = read_header(buf)
    except (ValueError, OSError, EOFError, SyntaxError) as e:
        raise LoadError("bad_npy", f"{name}: {type(e).__name__}: {e}") from e
    count = int(np.prod(shape, dtype=np.int64))
    if dtype.hasobject or count * dtype.itemsize != len(data) - buf.tell():
        raise LoadError("bad_npy", f"{name}: dtype {dtype}, shape {shape} does not match "
                                   f"{len(data) - buf.tell()} data bytes (object arrays refused)")
    a = np.frombuffer(data, dtype=dtype, count=count, offset=buf.tell())
    return a.reshape(shape, order="F" if fortran else "C")


def _check_meta(meta: Any, cfg: Any) -> str:
    """The sample's own preprocessing stamp must match what the loader expects."""
    if not isinstance(meta, dict) or not isinstance(meta.get("objects"), list):
        raise LoadError("bad_json", "json member is not a sample record with 'objects'")
    want = {"schema": cfg.schema_version, "grid": cfg.vision.grid, "size": cfg.image_size}
    for field, value in want.items():
        if field in meta and meta[field] != value:
            raise LoadError("preprocessing_mismatch", f"sample {field}={meta[field]!r}, "
                                                      f"loader expects {value!r}")
    kind = meta.get("kind", "image")
    if kind not in ("image", "video"):
        raise LoadError("bad_json", f"unknown sample kind {kind!r}")
    return kind


def _prompt_and_k(raw: dict[str, Any], meta: dict, kind: str, grid: int) -> tuple[np.ndarray,
                                                                                   np.ndarray]:
    prompt, k = _npy(raw, "prompt_masks.npy"), _npy(raw, "k.npy")
    n = len(meta["objects"])
    lead = prompt.shape[:-2]
    ndim = 4 if kind == "video" else 3
    if prompt.dtype != bool or prompt.ndim != ndim or prompt.shape[-2:] != (grid, grid):
        lead_dims = "(T, n" if kind == "video" else "(n"
        raise LoadError("inconsistent", f"prompt_masks {prompt.dtype} {prompt.shape}, expected "
                                        f"bool {lead_dims}, {grid}, {grid})")
    if lead[-1] != n or k.shape != lead or k.dtype.kind not in "iu":
        raise LoadError("inconsistent", f"{n} objects, prompt_masks {prompt.shape}, "
                                        f"k {k.dtype} {k.shape}")
    if not np.array_equal(k, prompt.sum(axis=(-2, -1))):
        raise LoadError("inconsistent", "k differs from the prompt masks' set-cell counts")
    return prompt, k.astype(np.int64)


def object_texts(obj: dict) -> list[str]:
    """The object's texts from the first non-empty field of `TEXT_FIELDS` (empty if none)."""
    for field in TEXT_FIELDS:
        v = obj.get(field)
        if isinstance(v, str) and v.strip():
            return [v.strip()]
        if isinstance(v, list):
            texts = [t.strip() for t in v if isinstance(t, str) and t.strip()]
            if texts:
                return texts
    return []


def _select_objects(objects: list[dict], k_vp: np.ndarray, task: str, cfg: Any,
                    rng: np.random.Generator) -> np.ndarray:
    """Indices of the objects used this step: with text, K > 0 for region captioning (unless
    `k_zero='keep'`), then at most `max_objects` of them (seeded, kept in stored order)."""
    usable = np.array([bool(object_texts(o)) for o in objects], dtype=bool)
    if task == "mask_to_caption" and cfg.k_zero == "drop":
        usable &= k_vp > 0
    idx = np.flatnonzero(usable)
    if cfg.max_objects is not None and len(idx) > cfg.max_objects:
        idx = np.sort(rng.choice(idx, cfg.max_objects, replace=False))
    if len(idx) == 0:
        raise LoadError("no_usable_objects", f"none of {len(objects)} objects has text"
                        + (" and K > 0" if task == "mask_to_caption" else ""), corrupt=False)
    return idx


def _decode_images(raw: dict[str, Any], kind: str, size: int) -> torch.Tensor:
    """(T, S, S, 3) uint8 frames (HWC: collate stacks them into channels_last batches)."""
    if kind == "video":
        names = sorted(n for n in raw if FRAME_MEMBER.fullmatch(n))
        if not names:
            raise LoadError("missing_member", "video sample without f0000.jpg frames")
    else:
        names = ["jpg" if "jpg" in raw else "png"]
    frames = []
    for name in names:
        try:
            # the stored image must be S x S: anything larger is refused from its header
            a = ops.decode_image(_member(raw, name), max_pixels=size * size, name=name)
        except SampleError as e:
            raise LoadError("corrupt_image", e.detail) from e
        if a.shape != (size, size, 3):
            raise LoadError("inconsistent", f"{name} is {a.shape[1]}x{a.shape[0]}, "
                                            f"expected {size}x{size}")
        frames.append(a)
    with warnings.catch_warnings():  # Pillow's read-only buffer; collate copies it, never writes
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(frames[0][None] if len(frames) == 1 else np.stack(frames))


def _decode_rles(rles: Any, idx: np.ndarray, n: int, h: int, w: int, *, packed: bool,
                 validate: bool) -> np.ndarray:
    """Selected objects' masks: packed (n_sel, W, ceil(H/8)) uint8 bits along H (pycocotools'
    column-major planes pack without a copy) or dense (n_sel, H, W) uint8."""
    if not isinstance(rles, list) or len(rles) != n:
        got = len(rles) if isinstance(rles, list) else type(rles).__name__
        raise LoadError("inconsistent", f"RLE list of {got} for {n} objects")
    try:
        chosen = [ops.segmentation_to_rle(rles[i], h, w) if validate else
                  {"size": rles[i]["size"], "counts": rles[i]["counts"].encode()} for i in idx]
        masks = ops.rle_decode(chosen, height=h, width=w)  # (n_sel, H, W) column-major view
    except SampleError as e:
        raise LoadError("bad_rle", e.detail) from e
    except (KeyError, TypeError, AttributeError) as e:
        raise LoadError("bad_rle", f"{type(e).__name__}: {e}") from e
    if packed:
        return np.packbits(masks.transpose(0, 2, 1), axis=-1)
    return np.ascontiguousarray(masks)


def _gt_masks(raw: dict[str, Any], name: str, kind: str, idx: np.ndarray, n: int, h: int,
              w: int, cfg: Any, frames: int) -> torch.Tensor:
    rles = _json(raw, name)
    opts = {"packed": cfg.gt_format == "packed", "validate": cfg.validate_rle}
    if kind == "video":
        if not isinstance(rles, list) or len(rles) != frames:
            raise LoadError("inconsistent", f"{name}: expected a list over {frames} frames")
        return torch.from_numpy(np.stack([_decode_rles(f, idx, n, h, w, **opts) for f in rles]))
    return torch.from_numpy(_decode_rles(rles, idx, n, h, w, **opts))


def _pick(options: Sequence[str], rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]


def _clean_phrase(text: str) -> str:
    # RefCOCO_Dataset._parse_annotations: lower-case, one trailing '.' removed
    phrase = text.lower()
    return phrase[:-1] if phrase.endswith(".") else phrase


def _image_block(kind: str, frames: int, tokens: int, n_tiles: int) -> str:
    if kind == "video":  # Sa2VA video prompt: one block per frame, no separator before the text
        return "".join(image_prompt(tokens) + "\n" for _ in range(frames)).strip()
    return image_prompt(tokens, n_tiles=n_tiles) + "\n"


def caption_turns(texts: list[str], ks: list[int], image: str, rng: np.random.Generator,
                  wording: Wording) -> list[dict[str, str]]:
    """Region captioning (Osprey-style structure): the first input is the image block, the
    regions header with K `<IMG_CONTEXT>` per region, then a question about region1; one turn
    per region; answers have `<` and `>` removed, as Sa2VA does."""
    turns = []
    for i, text in enumerate(texts):
        question = _pick(wording.region_questions, rng).format(region=f"region{i + 1}")
        if i == 0:
            question = image + regions_header(ks) + question
        turns.append({"input": question, "output": text.replace("<", "").replace(">", "")})
    return turns


def referring_turns(texts: list[str], image: str, rng: np.random.Generator,
                    wording: Wording) -> list[dict[str, str]]:
    """Referring segmentation (RefCOCO-style structure): one "segment the {phrase}" turn per object,
    answered with one `[SEG]`; the object's GT mask is that turn's target."""
    turns = []
    for i, text in enumerate(texts):
        question = _pick(wording.seg_questions, rng).format(phrase=_clean_phrase(text))
        if i == 0:
            question = image + question
        turns.append({"input": question, "output": _pick(wording.seg_answers, rng)})
    return turns


def _task(cfg: Any, rng: np.random.Generator) -> str:
    if cfg.task == "mixed":
        return "mask_to_caption" if rng.random() < 0.5 else "caption_to_mask"
    return cfg.task


def decode_sample(raw: dict[str, Any], cfg: Any, rng: np.random.Generator) -> dict[str, Any]:
    """Decode one grouped tar sample into a training sample (CPU tensors, uint8 / packed).

    Args:
        raw: member suffix -> bytes, plus `__key__` / `__url__` (webdataset grouping).
        cfg: the `LoaderConfig`.
        rng: this sample's generator (seeded from seed, epoch and key, so a resumed run makes
            the same choices).

    Returns:
        A dict with `image` (T, S, S, 3) uint8, `prompt_masks` bool, `k` int64, GT masks,
        `conversation`, `objects`, ... (see `loader.collate`).

    Raises:
        LoadError: the sample is unusable; its `reason` names the stats counter.
    """
    meta = _json(raw, "json")
    kind = _check_meta(meta, cfg)
    prompt, k = _prompt_and_k(raw, meta, kind, cfg.vision.grid)
    task = _task(cfg, rng)
    k_vp = k[0] if kind == "video" else k  # video: the first frame carries the visual prompt
    idx = _select_objects(meta["objects"], k_vp, task, cfg, rng)
    images = _decode_images(raw, kind, cfg.image_size)
    frames = images.shape[0]
    if kind == "video" and (prompt.shape[0] != frames):
        raise LoadError("inconsistent", f"{frames} frames but prompt masks for {prompt.shape[0]}")
    sample = {"kind": kind, "task": task, "image": images, "meta": meta,
              "objects": [meta["objects"][i] for i in idx], "object_index": idx.tolist(),
              "prompt_masks": torch.from_numpy(np.ascontiguousarray(prompt[..., idx, :, :])),
              "k": torch.from_numpy(np.ascontiguousarray(k[..., idx]))}
    _add_gt(sample, raw, kind, idx, len(meta["objects"]), meta, cfg)
    _add_text(sample, kind, frames, k_vp[idx], meta, cfg, rng)
    return sample


def _add_gt(sample: dict, raw: dict, kind: str, idx: np.ndarray, n: int, meta: dict,
            cfg: Any) -> None:
    size, frames = cfg.image_size, sample["image"].shape[0]
    if cfg.gt_masks in ("1024", "both"):
        sample["gt_masks_1024"] = _gt_masks(raw, "masks_1024.json", kind, idx, n, size, size,
                                            cfg, frames)
    if cfg.gt_masks in ("full", "both"):
        h, w = int(meta.get("height", 0)), int(meta.get("width", 0))
        if h < 1 or w < 1:
            raise LoadError("bad_json", f"full-resolution masks need height/width, got {h}x{w}")
        sample["gt_masks"] = _gt_masks(raw, "gt_masks.json", kind, idx, n, h, w, cfg, frames)


def _add_text(sample: dict, kind: str, frames: int, ks: np.ndarray, meta: dict, cfg: Any,
              rng: np.random.Generator) -> None:
    grid = (1, 1)  # videos: one 448 tile per frame, as Sa2VA
    if kind == "image" and cfg.max_tiles > 1:
        grid = dynamic_grid(int(meta["width"]), int(meta["height"]), max_num=cfg.max_tiles,
                            image_size=cfg.vision.image_size)
    if cfg.max_tiles > 1:
        sample["tile_grid"] = grid
    n_tiles = tile_count(grid)
    sample["num_tiles"] = frames if kind == "video" else n_tiles  # 448 tiles in `tiles`
    texts = [_pick(object_texts(o), rng) for o in sample["objects"]]
    image = _image_block(kind, frames, cfg.vision.tokens_per_image, n_tiles)
    if sample["task"] == "mask_to_caption":
        sample["conversation"] = caption_turns(texts, [int(v) for v in ks], image, rng,
                                               cfg.wording)
    else:
        sample["conversation"] = referring_turns(texts, image, rng, cfg.wording)
    sample["texts"] = texts
