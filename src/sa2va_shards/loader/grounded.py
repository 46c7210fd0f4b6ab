"""Loader text for the two tasks without region prompts: grounded caption generation (GCG)
and stored conversations (LLaVA-665K, Chat-UniVi). Pure functions, no I/O.

GCG follows Sa2VA's GCG datasets: one turn, the image block and a question asking for a brief
description with interleaved masks, answered by the stored caption with `<p> phrase </p> [SEG]`
around every grounded phrase, in caption order; the k-th `[SEG]` predicts the k-th phrase's
mask. The questions are ours (`Wording.gcg_questions`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["gcg_answer", "gcg_turns", "gcg_units", "is_gcg"]


def is_gcg(meta: dict) -> bool:
    """Whether a sample is a grounded caption (a GCG reader's `gcg` record)."""
    return isinstance(meta.get("gcg"), dict) and isinstance(meta["gcg"].get("caption"), str)


def gcg_units(meta: dict) -> list[tuple[str, list[int]]]:
    """(phrase, [object]) per grounded phrase still in the sample, in caption order. Every
    phrase is served (a caption cannot lose a tag without changing its meaning, so
    `max_objects` does not apply)."""
    spans = [(o.get("span"), i) for i, o in enumerate(meta["objects"])]
    ok = [(s, i) for s, i in spans if isinstance(s, list) and len(s) == 2]
    return [(meta["objects"][i].get("phrase", ""), [i]) for _, i in sorted(ok)]


def gcg_answer(caption: str, spans: list[list[int]]) -> str:
    """The caption with `<p> phrase </p> [SEG]` around each [start, end) span (Sa2VA's tag
    format, spaces inside the tags included); spans must not overlap."""
    out, at = [], 0
    for s, e in sorted(spans):
        if s < at or not 0 <= s < e <= len(caption):
            raise ValueError(f"span [{s}, {e}] overlaps or leaves the caption")
        out += [caption[at:s], f"<p> {caption[s:e]} </p> [SEG]"]
        at = e
    return "".join(out) + caption[at:]


def gcg_turns(meta: dict, units: list[tuple[str, list[int]]], image: str,
              rng: np.random.Generator, wording: Any) -> list[dict[str, str]]:
    """The single GCG turn: image block + a question, the tagged caption as the answer."""
    spans = [meta["objects"][members[0]]["span"] for _, members in units]
    question = wording.gcg_questions[int(rng.integers(len(wording.gcg_questions)))]
    return [{"input": image + question, "output": gcg_answer(meta["gcg"]["caption"], spans)}]
