"""One shard sample -> one training sample: safe member decode, object choice, task text.

Runs in DataLoader workers. Workers return uint8 images and bit-packed masks, never float
tensors: shipping big tensors between processes is the loader's bottleneck (docs/benchmarks.md),
so the 448 resize, normalisation and mask unpacking happen in `batch.to_device`.

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
from sa2va_shards.errors import SampleError
from sa2va_shards.format import (
    FRAME_MEMBER,
    GT_MASKS,
    IMAGE,
    MASKS,
    META,
    PROMPT_MASKS,
    THUMB,
    TILE_MEMBERS,
    TILES,
    K,
)
from sa2va_shards.loader.gpu_decode import defer_image
from sa2va_shards.loader.grounded import gcg_turns, gcg_units, is_gcg
from sa2va_shards.loader.originals import decode_original, is_original, original_views
from sa2va_shards.loader.prompts import image_prompt, regions_header
from sa2va_shards.ops.tiles import dynamic_grid, tile_count

__all__ = [
    "FRAME_MEMBER",
    "OTHER_TASKS",
    "TASKS",
    "TEXT_FIELDS",
    "build_tasks",
    "Wording",
    "decode_sample",
    "wanted_member",
]

_BASE_MEMBERS = {IMAGE, "png", META, PROMPT_MASKS, K}
#: what a sample can be served for: region captioning, referring segmentation.
TASKS: tuple[str, ...] = ("mask_to_caption", "caption_to_mask")
#: tasks of builds without region prompts: grounded caption generation (GCG readers) and
#: stored conversations with no masks (LLaVA-665K, Chat-UniVi; `loader/chat.py`).
OTHER_TASKS: tuple[str, ...] = ("gcg", "chat")

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
    #: appended to every question of Osprey's short-form file (Sa2VA's instruction, which
    #: its checkpoints were trained with).
    short_answer_suffix: str = " Answer the question using a single word or phrase."
    #: Osprey dialogues: Sa2VA strips every `<` and `>` from the stored turns before it looks
    #: for the `<image>` tag, so its models were trained on a stray "image" line after the
    #: regions header. True (default) does the same; False removes the tag instead.
    osprey_image_quirk: bool = True
    #: grounded caption generation (GCG) questions: a brief description with masks per phrase.
    gcg_questions: tuple[str, ...] = (
        "Give a short description of the image, with a segmentation mask after each object "
        "you mention.",
        "Briefly describe this picture and segment the things your description names.",
        "Write a brief caption of the image with interleaved masks for its phrases.",
        "Describe the scene in a few words, adding a mask for every object you refer to.",
    )

    def __post_init__(self) -> None:
        for name in ("region_questions", "seg_questions", "seg_answers", "gcg_questions"):
            if not getattr(self, name):
                raise ValueError(f"Wording.{name} must not be empty")
        if any(a.count("[SEG]") != 1 for a in self.seg_answers):
            raise ValueError("every seg answer needs exactly one [SEG]")


def wanted_member(suffix: str, *, gt_masks: str) -> bool:
    """Whether a member suffix is read at all (unknown members are skipped unread)."""
    if suffix in _BASE_MEMBERS or suffix in TILE_MEMBERS or FRAME_MEMBER.fullmatch(suffix):
        return True
    if suffix == MASKS:
        return gt_masks in ("image", "both")
    return suffix == GT_MASKS and gt_masks in ("full", "both")


def _member(raw: dict[str, Any], name: str) -> bytes:
    if name not in raw:
        raise SampleError("missing_member", f"no {name!r} member")
    return raw[name]


def _json(raw: dict[str, Any], name: str) -> Any:
    try:
        return json.loads(_member(raw, name).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SampleError("bad_json", f"{name}: {e}") from e


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
        raise SampleError("bad_npy", f"{name}: {type(e).__name__}: {e}") from e
    count = int(np.prod(shape, dtype=np.int64))
    if dtype.hasobject or count * dtype.itemsize != len(data) - buf.tell():
        raise SampleError("bad_npy", f"{name}: dtype {dtype}, shape {shape} does not match "
                                   f"{len(data) - buf.tell()} data bytes (object arrays refused)")
    a = np.frombuffer(data, dtype=dtype, count=count, offset=buf.tell())
    return a.reshape(shape, order="F" if fortran else "C")


def _check_meta(meta: Any, cfg: Any) -> str:
    """The sample's own preprocessing stamp must match what the loader expects."""
    if not isinstance(meta, dict) or not isinstance(meta.get("objects"), list):
        raise SampleError("bad_json", "json member is not a sample record with 'objects'")
    want = {"schema": cfg.schema_version, "grid": cfg.vision.grid, "size": cfg.image_size}
    for field, value in want.items():
        if field in meta and meta[field] != value:
            raise SampleError("preprocessing_mismatch", f"sample {field}={meta[field]!r}, "
                                                      f"loader expects {value!r}")
    kind = meta.get("kind", "image")
    if kind not in ("image", "video"):
        raise SampleError("bad_json", f"unknown sample kind {kind!r}")
    return kind


def _prompt_and_k(raw: dict[str, Any], meta: dict, kind: str, grid: int) -> tuple[np.ndarray,
                                                                                   np.ndarray]:
    prompt, k = _npy(raw, PROMPT_MASKS), _npy(raw, K)
    n = len(meta["objects"])
    lead = prompt.shape[:-2]
    ndim = 4 if kind == "video" else 3
    if prompt.dtype != bool or prompt.ndim != ndim or prompt.shape[-2:] != (grid, grid):
        lead_dims = "(T, n" if kind == "video" else "(n"
        raise SampleError("inconsistent", f"prompt_masks {prompt.dtype} {prompt.shape}, expected "
                                        f"bool {lead_dims}, {grid}, {grid})")
    if lead[-1] != n or k.shape != lead or k.dtype.kind not in "iu":
        raise SampleError("inconsistent", f"{n} objects, prompt_masks {prompt.shape}, "
                                        f"k {k.dtype} {k.shape}")
    if not np.array_equal(k, prompt.sum(axis=(-2, -1))):
        raise SampleError("inconsistent", "k differs from the prompt masks' set-cell counts")
    return prompt, k.astype(np.int64)


def object_texts(obj: dict) -> tuple[str | None, list[str]]:
    """(field, texts) from the object's first non-empty field of `TEXT_FIELDS`; (None, [])
    when it has none."""
    for field in TEXT_FIELDS:
        v = obj.get(field)
        if isinstance(v, str) and v.strip():
            return field, [v.strip()]
        if isinstance(v, list):
            texts = [t.strip() for t in v if isinstance(t, str) and t.strip()]
            if texts:
                return field, texts
    return None, []


def clean_phrase(text: str) -> str:
    """A referring phrase as it goes into "... the {phrase} ...": lower-cased (Sa2VA lower-cases
    referring sentences), one trailing '.' and a leading article removed (our templates say
    "the", and Ref-SAV captions start with one)."""
    phrase = text.strip().lower()
    phrase = phrase[:-1] if phrase.endswith(".") else phrase
    return _ARTICLE.sub("", phrase, count=1)


_ARTICLE = re.compile(r"^(the|a|an)\s+")


def referring_targets(objects: list[dict], rng: np.random.Generator
                      ) -> list[tuple[str, list[int]]]:
    """(phrase, member object indices) per referring target; no phrase names two targets.

    An object whose only text is its `category` is not a referring expression: a category
    names every instance of it, so each category is ONE target, the union of all its
    instances in the sample. An object with a real expression (caption, sentences, ...) is
    its own target, with a phrase drawn (seeded) among those no other target uses; an object
    left without an unused phrase sits this step out.
    """
    categories: dict[str, list[int]] = {}
    expressions: list[tuple[int, list[str]]] = []
    for i, obj in enumerate(objects):
        field, texts = object_texts(obj)
        if field == "category":
            categories.setdefault(clean_phrase(texts[0]), []).append(i)
        elif texts:
            expressions.append((i, texts))
    targets = [(phrase, members) for phrase, members in categories.items()]
    used = set(categories)
    for i, texts in expressions:
        free = [t for t in texts if clean_phrase(t) not in used]
        if free:
            text = _pick(free, rng)
            used.add(clean_phrase(text))
            targets.append((text, [i]))
    return sorted(targets, key=lambda t: t[1][0])


def _caption_units(objects: list[dict], k_vp: np.ndarray, cfg: Any,
                   rng: np.random.Generator) -> list[tuple[str, list[int]]]:
    """(text, [object]) per captioned region: objects with text, K > 0 on the prompt frame
    (unless `k_zero='keep'`); one of the object's texts drawn (seeded)."""
    units = []
    for i, obj in enumerate(objects):
        texts = object_texts(obj)[1]
        if texts and (cfg.k_zero == "keep" or k_vp[i] > 0) and k_vp[i] >= cfg.min_k:
            units.append((_pick(texts, rng), [i]))
    return units


def _limit(units: list, cfg: Any, rng: np.random.Generator) -> list:
    """At most `max_objects` units (seeded, kept in stored order)."""
    if cfg.max_objects is None or len(units) <= cfg.max_objects:
        return units
    keep = np.sort(rng.choice(len(units), cfg.max_objects, replace=False))
    return [units[i] for i in keep]


def sample_frames(total: int, frames: int | None, rng: np.random.Generator) -> np.ndarray:
    """Stored frame indices used this step, sorted: Sa2VA's video rule (seeded here) draws
    `frames` distinct frames when the clip has more than `frames + 1`, else `frames` with
    replacement (a short clip repeats frames); None takes every stored frame once."""
    if frames is None:
        return np.arange(total)
    return np.sort(rng.choice(total, frames, replace=total <= frames + 1))


def _decode_images(raw: dict[str, Any], kind: str, size: int, frames: np.ndarray,
                   stored: int) -> torch.Tensor:
    """(T, S, S, 3) uint8 of the chosen stored frames (HWC: collate stacks them into
    channels_last batches); only those frames' JPEGs are decoded."""
    if kind == "video":
        names = sorted(n for n in raw if FRAME_MEMBER.fullmatch(n))
        if len(names) != stored:
            raise SampleError("inconsistent", f"{len(names)} frames but prompt masks for {stored}")
        names = [names[i] for i in frames]
    else:
        names = [IMAGE if IMAGE in raw else "png"]
    decoded = []
    for name in names:
        try:
            # the stored image must be S x S: anything larger is refused from its header
            a = ops.decode_image(_member(raw, name), max_pixels=size * size, name=name)
        except SampleError as e:
            raise SampleError("corrupt_image", e.detail) from e
        if a.shape != (size, size, 3):
            raise SampleError("inconsistent", f"{name} is {a.shape[1]}x{a.shape[0]}, "
                                            f"expected {size}x{size}")
        decoded.append(a)
    with warnings.catch_warnings():  # Pillow's read-only buffer; collate copies it, never writes
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(decoded[0][None] if len(decoded) == 1 else np.stack(decoded))


def _decode_rles(rles: Any, groups: list[list[int]], n: int, h: int, w: int, *, packed: bool,
                 validate: bool) -> np.ndarray:
    """One mask per group, the union of its objects' masks (exact: a bitwise OR, also of the
    packed bits): packed (n_groups, W, ceil(H/8)) uint8 bits along H (pycocotools'
    column-major planes pack without a copy) or dense (n_groups, H, W) uint8."""
    if not isinstance(rles, list) or len(rles) != n:
        got = len(rles) if isinstance(rles, list) else type(rles).__name__
        raise SampleError("inconsistent", f"RLE list of {got} for {n} objects")
    idx = sorted({i for g in groups for i in g})
    try:
        chosen = [ops.segmentation_to_rle(rles[i], h, w) if validate else
                  {"size": rles[i]["size"], "counts": rles[i]["counts"].encode()} for i in idx]
        masks = ops.rle_decode(chosen, height=h, width=w)  # (n_sel, H, W) column-major view
    except SampleError as e:
        raise SampleError("bad_rle", e.detail) from e
    except (KeyError, TypeError, AttributeError) as e:
        raise SampleError("bad_rle", f"{type(e).__name__}: {e}") from e
    planes = np.packbits(masks.transpose(0, 2, 1), axis=-1) if packed else masks
    row = {i: r for r, i in enumerate(idx)}
    out = [planes[row[g[0]]] if len(g) == 1 else
           np.bitwise_or.reduce(planes[[row[i] for i in g]], axis=0) for g in groups]
    return np.ascontiguousarray(np.stack(out))


def _gt_masks(raw: dict[str, Any], name: str, kind: str, groups: list[list[int]], n: int,
              h: int, w: int, cfg: Any, frames: np.ndarray, stored: int) -> torch.Tensor:
    rles = _json(raw, name)
    opts = {"packed": cfg.gt_format == "packed", "validate": cfg.validate_rle}
    if kind == "video":
        if not isinstance(rles, list) or len(rles) != stored:
            raise SampleError("inconsistent", f"{name}: expected a list over {stored} frames")
        return torch.from_numpy(np.stack([_decode_rles(rles[f], groups, n, h, w, **opts)
                                          for f in frames]))
    return torch.from_numpy(_decode_rles(rles, groups, n, h, w, **opts))


def _union_grid(prompt: np.ndarray, groups: list[list[int]]) -> np.ndarray:
    """(..., n_groups, G, G) prompt masks of the groups: pooling is sampling, so the pooled
    union is the union of the pooled masks, bit for bit."""
    return np.stack([prompt[..., g, :, :].any(axis=-3) for g in groups], axis=-3)


def _pick(options: Sequence[str], rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]


def _image_block(kind: str, frames: int, tokens: int, n_tiles: int) -> str:
    if kind == "video":  # Sa2VA video prompt: one block per frame, joined by newlines
        return "\n".join(image_prompt(tokens) for _ in range(frames))
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
    """Referring segmentation (RefCOCO-style structure): one "segment the {phrase}" turn per
    target, answered with one `[SEG]`; the target's GT mask is that turn's mask."""
    turns = []
    for i, text in enumerate(texts):
        # an expression that is a question (ReVOS's reasoning expressions) is asked as written,
        # as Sa2VA does; a phrase goes into one of the questions
        question = text.strip() if "?" in text else _pick(wording.seg_questions, rng).format(
            phrase=clean_phrase(text))
        if i == 0:
            question = image + question
        turns.append({"input": question, "output": _pick(wording.seg_answers, rng)})
    return turns


def is_dialogue(meta: dict) -> bool:
    """Whether the sample's text is a stored region dialogue (Osprey's `conversations` or
    per-region `description`) rather than per-object text."""
    return isinstance(meta.get("conversations"), list) or isinstance(meta.get("description"),
                                                                     list)


def _strip_brackets(text: Any) -> str:
    if not isinstance(text, str):
        raise SampleError("bad_dialogue", f"turn text is {type(text).__name__}, not a string")
    return text.replace("<", "").replace(">", "")


def _dialogue_messages(meta: dict, rng: np.random.Generator,
                       wording: Wording) -> list[tuple[str, str]]:
    """(role, text) messages as Sa2VA's Osprey datasets make them, before pairing."""
    if isinstance(meta.get("description"), list):  # detail description: a question per region
        messages = []
        for i, text in enumerate(meta["description"]):
            question = _pick(wording.region_questions, rng).format(region=f"region{i + 1}")
            messages += [("human", question), ("gpt", _strip_brackets(text))]
        return messages
    suffix = wording.short_answer_suffix if meta.get("task") == "osprey_short_form" else ""
    messages = []
    for turn in meta["conversations"]:
        if not isinstance(turn, dict) or turn.get("from") not in ("human", "gpt"):
            raise SampleError("bad_dialogue", f"turn {turn!r:.80} is not from human or gpt")
        value = turn["value"]
        if not wording.osprey_image_quirk and isinstance(value, str):
            value = re.sub(r"<image>\s*", "", value)
        value = _strip_brackets(value)
        messages.append((turn["from"], value + suffix if turn["from"] == "human" else value))
    return messages


def dialogue_turns(meta: dict, ks: list[int], image: str, rng: np.random.Generator,
                   wording: Wording) -> list[dict[str, str]]:
    """An Osprey element's stored dialogue as turns, built as Sa2VA's Osprey datasets build
    them: `<` and `>` stripped from every turn (`<region1>` -> `region1`); the regions header
    (K `<IMG_CONTEXT>` per region) before the first question, the image block before it;
    leading answers skipped; consecutive questions joined; a question left without an answer
    dropped. Detail descriptions get one question per region (`Wording.region_questions`)."""
    messages = _dialogue_messages(meta, rng, wording)
    while messages and messages[0][0] == "gpt":
        messages = messages[1:]
    turns, question, first = [], "", True
    for role, text in messages:
        if role == "human":
            if first:  # Sa2VA strips the header + first question as one string
                text, first = (regions_header(ks) + text).strip(), False
                text = image + text
            question += text
        else:
            turns.append({"input": question, "output": text})
            question = ""
    if not turns:
        raise SampleError("bad_dialogue", "no question/answer pair in the stored dialogue")
    return turns


def build_tasks(card: dict[str, Any]) -> tuple[str, ...]:
    """Tasks a build can serve, from its card's reader: Osprey's stored dialogues serve
    region captioning only; SA-V objects have text only with Ref-SAV captions; the other
    formats carry per-object text (category, caption, sentences) and serve both."""
    reader = (card.get("config") or {}).get("reader") or {}
    fmt = reader.get("format")
    if fmt == "gcg":
        return ("gcg",)
    if fmt in ("llava", "chatunivi"):
        return ("chat",)
    if fmt == "osprey":
        return ("mask_to_caption",)
    if fmt == "sav" and not (reader.get("options") or {}).get("expressions"):
        return ()
    return TASKS


def sample_tasks(meta: dict) -> tuple[str, ...]:
    """Tasks one sample can serve: a stored dialogue (Osprey) serves region captioning only;
    objects with text serve both; a grounded caption serves GCG only."""
    if is_gcg(meta):
        return ("gcg",)
    if is_dialogue(meta):
        return ("mask_to_caption",)
    if any(object_texts(o)[1] for o in meta["objects"]):
        return TASKS
    return ()


def _task(cfg: Any, meta: dict, rng: np.random.Generator) -> str:
    served = sample_tasks(meta)
    if cfg.task == "mixed":
        if not served:
            raise SampleError("no_usable_objects", "no object has text", corrupt=False)
        return served[int(rng.integers(len(served)))] if len(served) > 1 else served[0]
    if cfg.task not in served:
        raise SampleError("task_not_served", f"the sample cannot serve {cfg.task}", corrupt=False)
    return cfg.task


def _plan(meta: dict, kind: str, task: str, k_vp: np.ndarray, cfg: Any,
          rng: np.random.Generator) -> list[tuple[str, list[int]]]:
    """(text, member objects) per unit served: a region to caption or a referring target."""
    objects = meta["objects"]
    if task == "caption_to_mask" and kind == "video" and cfg.video_targets:
        targets = referring_targets(objects, rng)  # Sa2VA: a fixed number, with replacement
        units = [targets[i] for i in rng.choice(len(targets), cfg.video_targets)] if targets \
            else []
    elif task == "caption_to_mask":
        units = _limit(referring_targets(objects, rng), cfg, rng)
    elif task == "gcg":
        units = gcg_units(meta)
    elif is_dialogue(meta):  # the stored dialogue names every region: all are prompted
        if len(k_vp) and int(k_vp.min()) < cfg.min_k:
            raise SampleError("min_k", f"a region covers {int(k_vp.min())} grid cells, fewer than "
                                     f"min_k={cfg.min_k}", corrupt=False)
        units = [("", [i]) for i in range(len(objects))]
    else:
        units = _limit(_caption_units(objects, k_vp, cfg, rng), cfg, rng)
    if not units:
        why = " and K > 0" if task == "mask_to_caption" and cfg.k_zero == "drop" else ""
        raise SampleError("no_usable_objects", f"none of {len(objects)} objects has text{why}",
                        corrupt=False)
    return units


def decode_sample(raw: dict[str, Any], cfg: Any, rng: np.random.Generator, *,
                  defer: bool = False) -> dict[str, Any]:
    """Decode one grouped tar sample into a training sample (CPU tensors, uint8 / packed).

    Args:
        raw: member suffix -> bytes, plus `__key__` / `__url__` (webdataset grouping).
        cfg: the `LoaderConfig`.
        rng: this sample's generator (seeded from seed, epoch and key, so a resumed run makes
            the same choices).
        defer: an image's JPEG is checked and shipped undecoded (`deferred`), for
            `gpu_decode.decode_deferred` to decode on the training device.

    Returns:
        A dict with `image` (T, S, S, 3) uint8, per unit `prompt_masks` bool and `k` int64
        (video: over the chosen frames), GT masks, `conversation`, `objects`, ... (see
        `batch.collate`). A unit is one region (captioning) or one referring target (the
        union of a category's instances, or one object).

    Raises:
        SampleError: the sample is unusable; its `reason` names the stats counter.
    """
    meta = _json(raw, META)
    if isinstance(meta, dict) and meta.get("chat"):  # no objects: its own path
        from sa2va_shards.loader.chat import decode_chat  # it imports this module

        return decode_chat(raw, meta, cfg, rng)
    kind = _check_meta(meta, cfg)
    prompt, k = _prompt_and_k(raw, meta, kind, cfg.vision.grid)
    stored = prompt.shape[0] if kind == "video" else 1
    frames = sample_frames(stored, cfg.frames, rng) if kind == "video" else np.zeros(1, int)
    if kind == "video":
        prompt, k = prompt[frames], k[frames]
    task = _task(cfg, meta, rng)
    # the visual prompt sits on the last tile before the regions header: the thumbnail of an
    # image, the last chosen frame of a clip
    k_vp = k[-1] if kind == "video" else k
    units = _plan(meta, kind, task, k_vp, cfg, rng)
    groups = [members for _, members in units]
    grid = _union_grid(prompt, groups)
    deferred = defer_image(_member(raw, IMAGE), meta, cfg.image_size) if (
        defer and kind == "image" and "jpg" in raw) else None
    # a kept source (`image.store`): decoded here, its views made once the tile grid is known
    full = decode_original(_member(raw, IMAGE), meta) if is_original(
        meta, kind) and deferred is None else None
    if deferred is not None:
        image = [None]  # one frame, decoded on the device
    elif full is not None:
        image = None  # made from the source below, once the tile grid is known
    else:
        image = _decode_images(raw, kind, cfg.image_size, frames, stored)
    sample = {"kind": kind, "task": task, "meta": meta, "image": image,
              "frame_index": frames.tolist(), "object_index": groups,
              "objects": [_unit_record(meta["objects"], g) for g in groups],
              "prompt_masks": torch.from_numpy(grid),
              "k": torch.from_numpy(grid.sum(axis=(-2, -1)).astype(np.int64))}
    _add_gt(sample, raw, kind, groups, meta, cfg, frames, stored)
    _add_text(sample, [text for text, _ in units], meta, cfg, rng)
    if full is not None:
        sample.update(original_views(full, size=cfg.image_size, side=cfg.vision.image_size,
                                     grid=sample.get("tile_grid"), backend=cfg.resize_backend))
    else:
        _add_stored_tiles(sample, raw, meta, cfg)
    if deferred is not None:
        sample["deferred"] = deferred
    return sample


def _add_stored_tiles(sample: dict, raw: dict, meta: dict, cfg: Any) -> None:
    """The build's full-detail tile image and thumbnail (`image.tiles`), when the loader's
    `max_tiles` gives the grid they were made for (else tiles come from the S x S image)."""
    stored = meta.get("tiles")
    if "tile_grid" not in sample or not isinstance(stored, dict) or THUMB not in raw:
        return
    if list(stored.get("grid") or ()) != list(sample["tile_grid"]):
        return  # built for another max_tiles
    side = cfg.vision.image_size
    cols, rows = sample["tile_grid"]
    want = {THUMB: (side, side)}
    if cols * rows > 1:
        want[TILES] = (rows * side, cols * side)
    decoded = {}
    for name, (h, w) in want.items():
        try:
            a = ops.decode_image(_member(raw, name), max_pixels=h * w, name=name)
        except SampleError as e:
            raise SampleError("corrupt_image", e.detail) from e
        if a.shape[:2] != (h, w):
            raise SampleError("inconsistent", f"{name} is {a.shape[1]}x{a.shape[0]}, the grid "
                                            f"{cols}x{rows} needs {w}x{h}")
        decoded[name] = torch.from_numpy(np.ascontiguousarray(a))
    sample["thumb"] = decoded[THUMB]
    sample["tile_image"] = decoded.get(TILES)


def _unit_record(objects: list[dict], members: list[int]) -> dict:
    """The object record of a unit; a union target lists its members' ids."""
    if len(members) == 1:
        return objects[members[0]]
    return {**objects[members[0]], "id": [objects[i].get("id") for i in members]}


def _add_gt(sample: dict, raw: dict, kind: str, groups: list[list[int]], meta: dict, cfg: Any,
            frames: np.ndarray, stored: int) -> None:
    size, n = cfg.image_size, len(meta["objects"])
    if cfg.gt_masks in ("image", "both"):
        sample["image_masks"] = _gt_masks(raw, MASKS, kind, groups, n, size, size,
                                            cfg, frames, stored)
    if cfg.gt_masks in ("full", "both"):
        h, w = int(meta.get("height", 0)), int(meta.get("width", 0))
        if h < 1 or w < 1:
            raise SampleError("bad_json", f"full-resolution masks need height/width, got {h}x{w}")
        sample["gt_masks"] = _gt_masks(raw, GT_MASKS, kind, groups, n, h, w, cfg, frames,
                                       stored)


def set_tile_grid(sample: dict, meta: dict, cfg: Any) -> int:
    """InternVL's tile grid for the sample (`tile_grid`, when tiling is on) and its tile
    count: video frames (and a text sample's dummy tile) are one 448 tile each, as Sa2VA."""
    grid = (1, 1)
    if sample["kind"] == "image" and cfg.max_tiles > 1:
        grid = dynamic_grid(int(meta["width"]), int(meta["height"]), max_num=cfg.max_tiles,
                            image_size=cfg.vision.image_size)
    if cfg.max_tiles > 1:
        sample["tile_grid"] = grid
    return tile_count(grid)


def _add_text(sample: dict, texts: list[str], meta: dict, cfg: Any,
              rng: np.random.Generator) -> None:
    kind, frames = sample["kind"], len(sample["frame_index"])
    n_tiles = set_tile_grid(sample, meta, cfg)
    sample["num_tiles"] = frames if kind == "video" else n_tiles  # 448 tiles in `tiles`
    image = _image_block(kind, frames, cfg.vision.tokens_per_image, n_tiles)
    ks = sample["k"][-1] if kind == "video" else sample["k"]
    if sample["task"] == "caption_to_mask":
        sample["conversation"] = referring_turns(texts, image, rng, cfg.wording)
        sample["seg"] = len(texts)
    elif sample["task"] == "gcg":
        units = [(t, g) for t, g in zip(texts, sample["object_index"], strict=True)]
        sample["conversation"] = gcg_turns(meta, units, image, rng, cfg.wording)
        sample["seg"] = len(texts)
    elif is_dialogue(meta):
        sample["conversation"] = dialogue_turns(meta, ks.tolist(), image, rng, cfg.wording)
        texts = [o.get("region", f"region{i + 1}") for i, o in enumerate(sample["objects"])]
    else:
        sample["conversation"] = caption_turns(texts, ks.tolist(), image, rng, cfg.wording)
    sample["texts"] = texts
    sample["vp"] = sample["task"] == "mask_to_caption"
