"""Conversation-only readers (LLaVA-665K, Chat-UniVi): index, faults, how a sample without
objects (or without any picture) is stored, the served text against Sa2VA's contract, and the
model input dict (tiles x 256 `<IMG_CONTEXT>`, none for pure text, no masks, no `[SEG]`).

Sa2VA's contract (v1 `vqa_dataset.py` `LLaVADataset.get_inputid_labels`, `ChatUniVi_Dataset.py`
`prepare_text`, restated): leading answers skipped; a question's `<image>` becomes the image
token string (`<img>` + 256 x tiles `<IMG_CONTEXT>` + `</img>`), or is removed when the row has
no image, and the question is stripped; consecutive questions are joined; each answer closes a
turn and is stripped. A pure-text row gets a zero 448 tile and no image tokens. Chat-UniVi:
`<image>` removed, the first question prefixed with one image string per frame, joined by
newlines.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from sa2va_shards.build.run import run_build
from sa2va_shards.config import ReaderConfig, VisionConfig, parse_config
from sa2va_shards.errors import ConfigError
from sa2va_shards.loader import CorruptDataWarning, LoaderConfig, ShardDataset, ShardLoader
from sa2va_shards.loader.encode import Encoder
from sa2va_shards.readers import get_reader
from sa2va_shards.readers.chatunivi import segment_frames
from sa2va_shards.synth.chat import CHATUNIVI_FAULTS, LLAVA_FAULTS
from tests.helpers.sa2va_model import fill_slots
from tests.helpers.shards import check_faults, read_shards
from tests.helpers.tokenizer import tiny_tokenizer

TOKENS = VisionConfig().tokens_per_image
N_LLAVA, N_VIDEO = 10, 3
LLAVA_REASONS = {"missing_image": "missing_image", "corrupt_image": "corrupt_image",
                 "no_answer": "no_dialogue", "bad_turns": "bad_annotation",
                 "two_images": "bad_annotation"}
VIDEO_REASONS = {"missing_video": "missing_video", "corrupt_video": "corrupt_video",
                 "no_answer": "no_dialogue"}


def _build(root, fmt, out, **options):
    cfg = parse_config({"dataset": fmt, "reader": {"format": fmt, "root": str(root),
                                                   "options": options},
                        "shards": {"samples_per_shard": 4}, "out": str(out)})
    return run_build(cfg, runner="serial", progress=False)


@pytest.fixture(scope="module")
def llava(synth, tmp_path_factory):
    root = synth("llava", n_items=N_LLAVA, seed=2, faults=LLAVA_FAULTS)
    return root, _build(root, "llava", tmp_path_factory.mktemp("llava"))


@pytest.fixture(scope="module")
def univi(synth, tmp_path_factory):
    root = synth("chatunivi", n_items=N_VIDEO, seed=2, faults=CHATUNIVI_FAULTS)
    return root, _build(root, "chatunivi", tmp_path_factory.mktemp("univi"))


@pytest.fixture(scope="module")
def encoder():
    return Encoder(tiny_tokenizer(), "phi3_chat")


def _rows(root):
    return json.loads((root / "LLaVA-Instruct-150K" / "llava_v1_5_mix665k.json").read_text())


def _ids(rows, key):
    return {r[key].rsplit("/", 1)[-1][6:-4]: f"{stem}_{i:07d}" for i, r in enumerate(rows)
            for stem in [("llava_v1_5_mix665k" if key == "image" else "video_chat")]
            if r.get(key, "").rsplit("/", 1)[-1].startswith("fault_")}


def sa2va_turns(turns: list[dict], image: str | None) -> list[dict]:
    """Sa2VA's LLaVA text rule (module docstring), re-implemented from the raw row."""
    while turns and turns[0]["from"] == "gpt":
        turns = turns[1:]
    out, question = [], ""
    for t in turns:
        value = t["value"]
        if t["from"] == "human":
            if image is None:
                value = value.replace("<image>", "")
            if "<image>" in value:
                value = value.replace("<image>", image).strip()
            question += value.strip()
        else:
            out.append({"input": question, "output": value.strip()})
            question = ""
    return out


def test_llava_every_row_is_written_or_rejected_with_its_reason(llava):
    root, build = llava
    ids = _ids(_rows(root), "image")
    check_faults(build, {ids[f]: r for f, r in LLAVA_REASONS.items()}, {})
    assert build.counts["read"] == N_LLAVA + len(LLAVA_FAULTS)
    assert build.counts["written"] == N_LLAVA and build.counts["objects_written"] == 0


def test_pure_text_rows_are_stored_without_a_picture(llava):
    root, build = llava
    rows = _rows(root)
    kinds = {}
    for m in read_shards(build.build_dir).values():
        meta = json.loads(m["json"])
        row = rows[int(meta["source_id"].rsplit("_", 1)[1])]
        kinds[meta["kind"]] = kinds.get(meta["kind"], 0) + 1
        assert meta["conversations"] == row["conversations"] and meta["objects"] == []
        assert json.loads(m["gt_masks.json"]) == [] and json.loads(m["masks.json"]) == []
        pictures = {n for n in m if n in ("jpg", "png")}
        assert pictures == (set() if "image" not in row else {"jpg"})
        assert meta["kind"] == ("text" if "image" not in row else "image")
    assert kinds == {"image": N_LLAVA - N_LLAVA // 4, "text": N_LLAVA // 4}


def test_skip_pure_text_rejects_them_as_source_filter(llava, tmp_path):
    root, _ = llava
    build = _build(root, "llava", tmp_path, skip_pure_text=True)
    assert build.counts["rejected_by_reason"]["source_filter"] == N_LLAVA // 4


@pytest.mark.parametrize("max_tiles", [0, 6])
def test_llava_text_matches_sa2va(llava, max_tiles):
    root, build = llava
    rows = _rows(root)
    cfg = LoaderConfig(task="chat", gt_masks="none", max_tiles=max_tiles)
    served = list(ShardDataset(build.build_dir, cfg))
    assert len(served) == N_LLAVA
    for s in served:
        row = rows[int(s["meta"]["source_id"].rsplit("_", 1)[1])]
        image = None
        if "image" in row:
            image = "<img>" + "<IMG_CONTEXT>" * (TOKENS * s["num_tiles"]) + "</img>"
        assert s["conversation"] == sa2va_turns(row["conversations"], image)
        assert s["seg"] == 0 and not s["vp"] and s["objects"] == []


@pytest.mark.parametrize("max_tiles", [0, 6])
def test_llava_batches_fill_the_models_slots(llava, encoder, max_tiles):
    _, build = llava
    cfg = LoaderConfig(task="chat", gt_masks="full", max_tiles=max_tiles)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CorruptDataWarning)
        batches = list(ShardLoader(ShardDataset(build.build_dir, cfg, encoder=encoder),
                                   batch_size=4, num_workers=0))
    text_rows = 0
    for data in batches:
        rows = fill_slots(data, encoder.img_context_id, TOKENS)
        tiles = data["pixel_values"]
        start = 0
        for b, slots in enumerate(rows):
            t = tiles[b]
            if float(t.abs().sum()) == 0:  # pure text: one zero tile, no slot
                assert len(t) == 1 and slots == []
                text_rows += 1
            else:
                assert slots == [("tile", start + i, c) for i in range(len(t))
                                 for c in range(TOKENS)]
            start += len(t)
        assert "masks" not in data and "vp_overall_mask" not in data
        assert int((data["input_ids"] == encoder.token_ids["[SEG]"]).sum()) == 0
        assert (data["labels"] != -100).any(dim=1).all()  # every row trains on its answers
    assert text_rows == N_LLAVA // 4


def test_chatunivi_faults_frames_and_mkv_fallback(univi):
    root, build = univi
    rows = json.loads((root / "video_chat.json").read_text())
    ids = _ids(rows, "video")
    check_faults(build, {ids[f]: r for f, r in VIDEO_REASONS.items()}, {})
    assert build.counts["written"] == N_VIDEO
    assert any(r["video"].endswith(".mkv") for r in rows[:N_VIDEO])  # found as .mp4
    for m in read_shards(build.build_dir).values():
        meta = json.loads(m["json"])
        i = int(meta["source_id"].rsplit("_", 1)[1])
        total = 8 + 9 * i  # the synth's frame count
        assert meta["frame_indices"] == segment_frames(total, 10)
        assert sum(n.startswith("f0") for n in m) == meta["frames"] == min(total, 10)


def test_segment_frames_takes_one_frame_per_equal_segment():
    assert segment_frames(3, 10) == [0, 1, 2]
    picked = segment_frames(100, 5)
    assert picked == [9, 29, 49, 69, 89]
    edges = np.linspace(0, 100, 6, dtype=int)
    assert all(a <= p < b for p, a, b in zip(picked, edges[:-1], edges[1:], strict=True))


def test_chatunivi_batches_have_one_tile_per_frame(univi, encoder):
    _, build = univi
    cfg = LoaderConfig(task="chat", gt_masks="full")
    batches = list(ShardLoader(ShardDataset(build.build_dir, cfg, encoder=encoder),
                               batch_size=2, num_workers=0))
    rows = 0
    for data in batches:
        fill_slots(data, encoder.img_context_id, TOKENS)
        for b in range(len(data["input_ids"])):
            assert len(data["pixel_values"][b]) == 5
            assert int((data["input_ids"][b] == encoder.img_context_id).sum()) == 5 * TOKENS
            rows += 1
    assert rows == N_VIDEO
    rows = json.loads((univi[0] / "video_chat.json").read_text())
    for s in ShardDataset(build.build_dir, LoaderConfig(task="chat")):
        row = rows[int(s["meta"]["source_id"].rsplit("_", 1)[1])]
        questions = [t["value"].replace("<image>", "") for t in row["conversations"]
                     if t["from"] == "human"]
        answers = [t["value"] for t in row["conversations"] if t["from"] == "gpt"]
        frames = "\n".join(["<img>" + "<IMG_CONTEXT>" * TOKENS + "</img>"] * 5)
        questions[0] = frames + questions[0]  # Sa2VA's Chat-UniVi text, nothing stripped
        assert s["conversation"] == [{"input": q, "output": a}
                                     for q, a in zip(questions, answers, strict=True)]


def test_chat_builds_serve_only_chat(llava):
    _, build = llava
    with pytest.raises(ConfigError, match="serves chat"):
        ShardDataset(build.build_dir, LoaderConfig(task="caption_to_mask"))
    assert {s["task"] for s in ShardDataset(build.build_dir, LoaderConfig(task="mixed"))} == {
        "chat"}


def test_readers_refuse_a_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        get_reader(ReaderConfig(format="llava", root=str(tmp_path))).list_items()
    with pytest.raises(ConfigError, match="positive int"):
        get_reader(ReaderConfig(format="chatunivi", root=str(tmp_path), options={"frames": 0}))



def test_conversation_builds_verify(llava, univi):
    from sa2va_shards.verify import verify_build

    for _, build in (llava, univi):
        report = verify_build(build.build_dir)
        assert report.ok, report.problems


def test_inspect_refuses_a_text_only_sample_and_draws_an_image_row(llava, tmp_path):
    from sa2va_shards.viz import render_overlay

    root, build = llava
    rows = _rows(root)
    text = next(i for i, r in enumerate(rows) if "image" not in r)
    image = next(i for i, r in enumerate(rows) if "image" in r)
    with pytest.raises(ConfigError, match="text only"):
        render_overlay(build.build_dir, tmp_path / "t.png", key=f"llava_v1_5_mix665k_{text:07d}")
    assert render_overlay(build.build_dir, tmp_path / "i.png",
                          key=f"llava_v1_5_mix665k_{image:07d}").exists()
