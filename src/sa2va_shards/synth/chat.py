"""Synthetic LLaVA-665K and Chat-UniVi sets in their published layouts (for the chat readers'
`synth`): image rows in LLaVA's image sub-folders, pure-text rows, multi-turn dialogues with a
leading answer or a dangling question, short H.264 videos; one row per fault kind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sa2va_shards.synth import common as _synth

__all__ = ["CHATUNIVI_FAULTS", "LLAVA_FAULTS", "write_chatunivi", "write_llava"]

LLAVA_FAULTS: tuple[str, ...] = ("missing_image", "corrupt_image", "no_answer", "bad_turns",
                                 "two_images")
CHATUNIVI_FAULTS: tuple[str, ...] = ("missing_video", "corrupt_video", "no_answer")
_FOLDERS = ("coco/train2017", "gqa/images", "ocr_vqa/images", "textvqa/train_images",
            "vg/VG_100K")
_QUESTIONS = ("What color is the {x}?", "How many {x}s are there?", "Is there a {x}?")
_NOUNS = ("dog", "cup", "car", "tree", "chair")


def _dialogue(rng: np.random.Generator, n: int, *, image: bool) -> list[dict]:
    turns = []
    for j in range(n):
        q = _QUESTIONS[j % len(_QUESTIONS)].format(x=_NOUNS[int(rng.integers(len(_NOUNS)))])
        if j == 0 and image:
            q = "<image>\n" + q if rng.random() < 0.5 else q + "\n<image>"
        turns += [{"from": "human", "value": q},
                  {"from": "gpt", "value": f"Answer {j}: {rng.integers(1, 9)}."}]
    return turns


def _llava_row(out: Path, rng: np.random.Generator, i: int) -> dict:
    if i % 4 == 3:  # pure text
        return {"id": f"text_{i}", "conversations": _dialogue(rng, 2, image=False)}
    h, w = _synth.SIZES[i % (len(_synth.SIZES) - 1)]
    rel = f"{_FOLDERS[i % len(_FOLDERS)]}/{i:06d}.jpg"
    (out / "llava_images" / rel).parent.mkdir(parents=True, exist_ok=True)
    (out / "llava_images" / rel).write_bytes(_synth.encode_image(_synth.make_image(rng, h, w)))
    turns = _dialogue(rng, 1 + i % 3, image=True)
    if i % 5 == 1:  # a leading answer and a dangling question: both left out of the turns
        turns = [{"from": "gpt", "value": "stray"}, *turns, {"from": "human", "value": "?"}]
    return {"id": f"img_{i}", "image": rel, "conversations": turns}


def _llava_fault(out: Path, rng: np.random.Generator, fault: str) -> dict:
    rel = f"coco/train2017/fault_{fault}.jpg"
    path = out / "llava_images" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    good = _synth.encode_image(_synth.make_image(rng, 120, 160))
    if fault != "missing_image":
        path.write_bytes(good[: len(good) // 3] if fault == "corrupt_image" else good)
    turns = _dialogue(rng, 2, image=True)
    if fault == "no_answer":
        turns = [t for t in turns if t["from"] == "human"]
    elif fault == "bad_turns":
        turns[1]["value"] = 7
    elif fault == "two_images":
        turns[2]["value"] = "<image>\n" + turns[2]["value"]
    return {"id": f"fault_{fault}", "image": rel, "conversations": turns}


def write_llava(out: Path, *, n_items: int, seed: int, faults: tuple[str, ...]) -> Path:
    """`<out>/LLaVA-Instruct-150K/llava_v1_5_mix665k.json` + `<out>/llava_images/...`."""
    unknown = set(faults) - set(LLAVA_FAULTS)
    if unknown:
        raise ValueError(f"unknown faults {sorted(unknown)}; known: {LLAVA_FAULTS}")
    rng = np.random.default_rng(seed)
    rows = [_llava_row(out, rng, i) for i in range(n_items)]
    rows += [_llava_fault(out, rng, f) for f in faults]
    (out / "LLaVA-Instruct-150K").mkdir(parents=True, exist_ok=True)
    (out / "LLaVA-Instruct-150K" / "llava_v1_5_mix665k.json").write_text(json.dumps(rows))
    return out


def _video(rng: np.random.Generator, n_frames: int, h: int = 96, w: int = 128) -> bytes:
    from sa2va_shards.synth.sav import encode_mp4

    base = _synth.make_image(rng, h, w)
    frames = [np.roll(base, 4 * t, axis=1) for t in range(n_frames)]
    return encode_mp4(frames)


def write_chatunivi(out: Path, *, n_items: int, seed: int, faults: tuple[str, ...]) -> Path:
    """`<out>/video_chat.json` + `<out>/Activity_Videos/*.mp4` (an `.mkv` name in the JSON
    for every other video: the reader falls back to `.mp4`, as Sa2VA does)."""
    unknown = set(faults) - set(CHATUNIVI_FAULTS)
    if unknown:
        raise ValueError(f"unknown faults {sorted(unknown)}; known: {CHATUNIVI_FAULTS}")
    rng = np.random.default_rng(seed)
    (out / "Activity_Videos").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_items):
        (out / "Activity_Videos" / f"v_{i:04d}.mp4").write_bytes(_video(rng, 8 + 9 * i))
        name = f"v_{i:04d}.mkv" if i % 2 else f"v_{i:04d}.mp4"
        rows.append({"video": name, "conversations": _dialogue(rng, 1 + i % 2, image=True)})
    for fault in faults:
        name = f"fault_{fault}.mp4"
        if fault == "corrupt_video":
            (out / "Activity_Videos" / name).write_bytes(b"not a video" * 10)
        elif fault == "no_answer":
            (out / "Activity_Videos" / name).write_bytes(_video(rng, 6))
        turns = _dialogue(rng, 1, image=True)
        rows.append({"video": name, "conversations": turns[:1] if fault == "no_answer"
                     else turns})
    (out / "video_chat.json").write_text(json.dumps(rows))
    return out
