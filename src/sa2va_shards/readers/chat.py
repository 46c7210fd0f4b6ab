"""Shared parts of the conversation-only readers (`llava.py`, `chatunivi.py`).

Conversation-only sets of Sa2VA's mix: LLaVA-665K (image VQA and pure-text rows) and
Chat-UniVi video chat. No masks: a sample is the picture (image, frames, or nothing) plus the
stored turns, served through the same tiles, template and tokens as the mask sets.

LLaVA-665K (`llava`): `<root>/<file>` is a list of `{id, image?, conversations: [{from,
value}]}`; `image` is relative to `<root>/<images>`. A row without `image` is pure text.
Chat-UniVi (`chatunivi`): `<root>/<file>` is a list of `{video, conversations}`; the video is
`<root>/<videos>/<video>` (an `.mkv` name that is missing falls back to `.mp4`, as in Sa2VA).
Its frames are decoded with PyAV and `frames` of them kept, one per equal segment of the
video (the segment's middle frame); the loader draws 5 of them per step (Sa2VA draws one
random frame in each of 5 segments of the whole video at every step).

How such a sample is stored (README "Conversation-only samples"): no objects, empty mask
members, `json` holding `conversations` and `"chat": "<reader>"`; an image row is an image
sample, a video a video sample, a pure-text row a sample of kind `text` with no picture member.

Rows whose turns hold no question followed by an answer are `no_dialogue` rejects; a row with
more than one `<image>` tag is a `bad_annotation` (the model receives one picture).
Source id: `<file stem>_<index in the list, 7 digits>`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sa2va_shards.errors import ConfigError, Reason, SampleError
from sa2va_shards.records import ItemRef, bad_item
from sa2va_shards.safe_io import duplicate_keys, load_setup_json

__all__ = ["chat_items", "chat_turns_checked", "turn_problem"]

_INDEX_DIGITS = 7


def turn_problem(turns: Any) -> str | None:
    """Why a `conversations` list cannot be served, or None: it must be {from, value} text
    turns from human / gpt with a question followed by an answer."""
    if not isinstance(turns, list) or not all(
            isinstance(t, dict) and t.get("from") in ("human", "gpt")
            and isinstance(t.get("value"), str) for t in turns):
        return "conversations must be a list of {from: human|gpt, value: text} turns"
    roles = [t["from"] for t in turns]
    if "human" not in roles or "gpt" not in roles[roles.index("human"):]:
        return "no question followed by an answer"
    return None


def _read_list(root: str, file: str) -> tuple[list, bool]:
    path = Path(root) / file
    data, dups = load_setup_json(path, unreadable="cannot read conversations",
                                 missing="conversation file not found (check reader.root and "
                                         "reader.options.file)")
    if not isinstance(data, list):
        raise ConfigError(f"{path}: expected a top-level JSON list, got {type(data).__name__}")
    return data, dups


def chat_items(root: str, file: str) -> list[ItemRef]:
    """One item per row, carrying the row as compact JSON (so `load` never re-reads the file)."""
    data, dups = _read_list(root, file)
    stem, items = Path(file).stem, []
    for i, rec in enumerate(data):
        sid = f"{stem}_{i:0{_INDEX_DIGITS}d}"
        if not isinstance(rec, dict):
            items.append(bad_item(sid, Reason.BAD_ANNOTATION,
                                  f"{file}[{i}]: element is {type(rec).__name__}"))
        elif dups and duplicate_keys(rec):
            items.append(bad_item(sid, Reason.BAD_ANNOTATION,
                                  f"{file}[{i}]: repeats keys {list(duplicate_keys(rec))}"))
        else:
            items.append(ItemRef(source_id=sid, data={"index": i, "record": json.dumps(
                rec, separators=(",", ":"), ensure_ascii=False)}))
    return sorted(items, key=lambda r: r.source_id)


def chat_turns_checked(rec: dict, where: str) -> list[dict]:
    turns = rec.get("conversations")
    problem = turn_problem(turns)
    if problem:
        reason = Reason.NO_DIALOGUE if problem.startswith("no question") else \
            Reason.BAD_ANNOTATION
        raise SampleError(reason, f"{where}: {problem}")
    if sum(t["value"].count("<image>") for t in turns) > 1:
        raise SampleError(Reason.BAD_ANNOTATION, f"{where}: more than one <image> tag")
    return turns
