"""Every demo format x task, image and video, served as Sa2VA's model input dict and checked
against the model's own slot-filling rule (tests/helpers/sa2va_model.py); the encode step's
template rules; Osprey dialogues; referring targets; a CPU training smoke test."""

from __future__ import annotations

import copy
import re
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from torch import nn

from pipeline.demo import DEMO_SETS
from sa2va_shards.config import VisionConfig
from sa2va_shards.errors import ConfigError
from sa2va_shards.format import GT_MASKS, decode_json, iter_samples
from sa2va_shards.loader import CorruptDataWarning, LoaderConfig, ShardDataset, ShardLoader
from sa2va_shards.loader.decode import (
    Wording,
    clean_phrase,
    dialogue_turns,
    referring_turns,
    sample_frames,
)
from sa2va_shards.loader.encode import (
    IGNORE_INDEX,
    SPECIAL_TOKENS,
    TEMPLATES,
    EncodeError,
    Encoder,
    add_special_tokens,
)
from tests.helpers import build_demo_formats
from tests.helpers.sa2va_model import fill_slots, seg_targets
from tests.helpers.tokenizer import tiny_tokenizer

TOKENS = VisionConfig().tokens_per_image
TASKS = ("mask_to_caption", "caption_to_mask")
#: what each demo format can serve (Osprey: its stored dialogues only).
SERVES = {"coco": TASKS, "osprey": ("mask_to_caption",), "describe_anything": TASKS,
          "refcoco": TASKS, "sav": TASKS, "mevis": TASKS, "revos": TASKS, "refytvos": TASKS}
VIDEO = {"sav", "mevis", "revos", "refytvos"}


@pytest.fixture(scope="module")
def builds(synth, tmp_path_factory):
    """Every demo format, built serially (small sets, the demo's reader options)."""
    return build_demo_formats(synth, tmp_path_factory.mktemp("sa2va"),
                              [fmt for fmt, *_ in DEMO_SETS],
                              n_items=lambda fmt: 3 if fmt in VIDEO else 6)


def _batches(build, encoder, **cfg):
    cfg = LoaderConfig(gt_masks="full", **cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CorruptDataWarning)  # nothing skipped as inconsistent
        return list(ShardLoader(ShardDataset(build, cfg, encoder=encoder), batch_size=3,
                                num_workers=0))


def _spans(ids: list[int], open_id: int, close_id: int) -> list[tuple[int, int]]:
    starts = [i for i, v in enumerate(ids) if v == open_id]
    ends = [i for i, v in enumerate(ids) if v == close_id]
    assert len(starts) == len(ends)
    return list(zip(starts, ends, strict=True))


def _check_row(ids: list[int], slots: list[tuple], tiles: range, prompt, encoder) -> int:
    """One sample's `<IMG_CONTEXT>` slots: its image blocks receive its own tiles, 256 cells
    each in order; its i-th `<vp>` block receives object i of its flagged tile, cells
    row-major. Returns the number of region blocks."""
    tid, ctx = encoder.token_ids, encoder.img_context_id
    pos = [i for i, v in enumerate(ids) if v == ctx]
    label = dict(zip(pos, slots, strict=True))
    image = [label[i] for a, b in _spans(ids, tid["<img>"], tid["</img>"]) for i in range(a + 1, b)]
    assert image == [("tile", t, c) for t in tiles for c in range(TOKENS)]
    regions = _spans(ids, tid["<vp>"], tid["</vp>"])
    for j, (a, b) in enumerate(regions):
        cells = torch.nonzero(prompt[j].flatten()).flatten().tolist()
        assert [label[i] for i in range(a + 1, b)] == [("region", tiles[-1], j, c)
                                                        for c in cells]
    assert len(image) + sum(b - a - 1 for a, b in regions) == len(slots)
    return len(regions)


@pytest.mark.parametrize("fmt", list(SERVES))
@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("max_tiles", [0, 6])
def test_every_build_and_task_fills_the_models_slots(builds, encoder, fmt, task, max_tiles):
    if task not in SERVES[fmt]:
        with pytest.raises(ConfigError, match="serves mask_to_caption"):
            ShardDataset(builds[fmt], LoaderConfig(task=task, gt_masks="full"), encoder=encoder)
        return
    batches = _batches(builds[fmt], encoder, task=task, max_tiles=max_tiles)
    assert sum(len(b["input_ids"]) for b in batches) > 0
    for data in batches:
        rows = fill_slots(data, encoder.img_context_id, TOKENS)
        tiles = data["pixel_values"]
        counts = [len(t) for t in tiles]
        starts = np.cumsum([0, *counts])
        prompts = iter(data.get("prompt_masks") or [])
        for b, slots in enumerate(rows):
            ids = data["input_ids"][b][data["attention_mask"][b]].tolist()
            flagged = task == "mask_to_caption"
            prompt = next(prompts) if flagged else None
            n_regions = _check_row(ids, slots, range(starts[b], starts[b + 1]), prompt, encoder)
            assert n_regions == (len(prompt) if flagged else 0)
        assert next(prompts, None) is None
        if task == "caption_to_mask":
            targets = seg_targets(data, encoder.token_ids["[SEG]"])
            assert len(targets) == len(rows)
            for _, masks in targets:
                assert masks.dtype == torch.uint8 and int(masks.max()) == 1
            assert all(g.dtype == torch.uint8 and g.shape == (3, 1024, 1024)
                       for g in data["g_pixel_values"])
        else:
            assert "masks" not in data and data["frames_per_batch"] == []
            assert data["vp_overall_mask"].dtype == torch.bool
            assert all(p.dtype == torch.uint8 for p in data["prompt_masks"])
        _check_contract_types(data, video=fmt in VIDEO)


def _check_contract_types(data: dict, *, video: bool) -> None:
    assert data["input_ids"].dtype == data["labels"].dtype == torch.long
    assert data["attention_mask"].dtype == torch.bool
    assert torch.equal(data["position_ids"][0], torch.arange(data["input_ids"].shape[1]))
    assert (data["input_ids"][~data["attention_mask"]] == 0).all()
    assert (data["labels"][~data["attention_mask"]] == IGNORE_INDEX).all()
    tiles = data["pixel_values"]
    for t in tiles:
        assert t.dtype == torch.float32 and t.shape[1:] == (3, 448, 448)
        assert len(t) == 5 if video else len(t) >= 1  # video: 5 frames a step, one tile each


def test_video_masks_are_object_major_and_match_the_light_batch(builds, encoder):
    cfg = {"task": "caption_to_mask", "shuffle": False}
    data = _batches(builds["sav"], encoder, **cfg)[0]
    light = next(iter(ShardDataset(builds["sav"], LoaderConfig(gt_masks="full", **cfg))))
    frames_major = torch.from_numpy(np.unpackbits(light["gt_masks"].numpy(), axis=-1)
                                    [..., :light["meta"]["height"]]).transpose(-1, -2)
    t, n = frames_major.shape[:2]
    assert data["masks"][0].shape[0] == n * t
    for o in range(n):
        for f in range(t):  # row o * T + f is object o at frame f
            assert torch.equal(data["masks"][0][o * t + f], frames_major[f, o])
    assert data["frames_per_batch"][0] == t == 5


def test_video_frames_are_drawn_per_step_from_the_whole_clip(builds):
    cfg = LoaderConfig(task="caption_to_mask", gt_masks="image")
    picks = set()
    for epoch in range(6):
        ds = ShardDataset(builds["sav"], cfg)
        ds.set_epoch(epoch)
        for s in ds:
            stored = len(s["meta"]["frame_indices"])
            assert s["frame_index"] == sorted(s["frame_index"]) and len(s["frame_index"]) == 5
            if stored > 6:  # more than frames + 1 stored: distinct frames
                assert len(set(s["frame_index"])) == 5
            picks |= set(s["frame_index"])
    assert max(picks) >= 6  # frames beyond the first 5 (the old first-N cut) are used


def test_sample_frames_follows_sa2va_rule():
    rng = np.random.default_rng(0)
    for total in range(1, 20):
        f = sample_frames(total, 5, rng)
        assert len(f) == 5 and list(f) == sorted(f) and f.max() < total
        if total > 6:
            assert len(set(f.tolist())) == 5
    assert sample_frames(3, None, rng).tolist() == [0, 1, 2]


def test_osprey_dialogue_as_sa2va_builds_it():
    meta = {"task": "osprey_short_form", "conversations": [
        {"from": "gpt", "value": "skipped"},
        {"from": "human", "value": "<image>\nWhat is <region1>?"},
        {"from": "gpt", "value": "a <b>dog</b>"},
        {"from": "human", "value": "And"}, {"from": "human", "value": " <region2>?"},
        {"from": "gpt", "value": "cat"}, {"from": "human", "value": "dangling"}]}
    turns = dialogue_turns(meta, [2, 0], "<IMG>\n", np.random.default_rng(0), Wording())
    header = ("There are 2 part regions in the picture: region1<vp><IMG_CONTEXT><IMG_CONTEXT>"
              "</vp>, region2<vp></vp>.\n")
    limit = " Answer the question using a single word or phrase."
    assert turns == [
        {"input": "<IMG>\n" + header + "image\nWhat is region1?" + limit, "output": "a bdog/b"},
        {"input": "And" + limit + " region2?" + limit, "output": "cat"}]
    no_quirk = dialogue_turns(meta, [2, 0], "<IMG>\n", np.random.default_rng(0),
                              Wording(osprey_image_quirk=False))
    assert no_quirk[0]["input"] == "<IMG>\n" + header + "What is region1?" + limit


def test_osprey_detail_descriptions_get_one_question_per_region():
    meta = {"task": "osprey_detail_description",
            "description": ["<region1>: A dog.", "<region2>: A cat."]}
    wording = Wording(region_questions=("Tell me about {region}.",))
    turns = dialogue_turns(meta, [1, 3], "", np.random.default_rng(0), wording)
    assert [t["output"] for t in turns] == ["region1: A dog.", "region2: A cat."]
    assert turns[0]["input"].endswith(".\nTell me about region1.")
    assert turns[1]["input"] == "Tell me about region2."


def test_osprey_build_serves_every_sample_with_all_regions(builds, encoder):
    ds = ShardDataset(builds["osprey"], LoaderConfig(gt_masks="none"))
    served = list(ds)
    assert len(served) == ShardDataset(builds["osprey"]).num_samples
    for s in served:
        assert len(s["objects"]) == len(s["meta"]["objects"])  # K = 0 regions too
        first = s["conversation"][0]["input"]
        assert first.count("<vp>") == len(s["meta"]["objects"])
        assert "<region" not in "".join(t["input"] + t["output"] for t in s["conversation"])


# -- referring targets (a category names all its instances) --------------------------------


def _stored_gt(s) -> list[np.ndarray]:
    members = dict(iter_samples(s["__url__"], names=(GT_MASKS,)))[s["__key__"]]
    rles = decode_json(members[GT_MASKS])
    return [mask_utils.decode({"size": r["size"], "counts": r["counts"].encode()}) for r in rles]


_PHRASE = re.compile(r"(?:Segment the |Where is the |mask of the |Find the |belong to the )"
                     r"(.+?)(?:\? |\.|$| in the image)")


@pytest.mark.parametrize("fmt", ["coco", "refcoco", "describe_anything", "sav", "revos"])
def test_no_phrase_names_two_targets_and_unions_are_exact(builds, fmt):
    cfg = LoaderConfig(task="caption_to_mask", gt_masks="full", gt_format="dense")
    seen = 0
    for epoch in range(3):
        ds = ShardDataset(builds[fmt], cfg)
        ds.set_epoch(epoch)
        for s in ds:
            targets: dict[str, bytes] = {}
            masks = s["gt_masks"][-1] if s["kind"] == "video" else s["gt_masks"]
            for turn, text, mask in zip(s["conversation"], s["texts"], masks, strict=True):
                phrase = clean_phrase(text)
                asked = text.strip() if "?" in text else f"the {phrase}"
                assert asked in turn["input"]
                digest = mask.numpy().tobytes()
                assert targets.setdefault(phrase, digest) == digest, phrase
            if fmt == "coco":  # each category's target is the union of all its instances
                stored = _stored_gt(s)
                for phrase, members, mask in zip(s["texts"], s["object_index"], masks,
                                                 strict=True):
                    cats = [i for i, o in enumerate(s["meta"]["objects"])
                            if o["category"] == phrase]
                    assert sorted(members) == cats
                    union = np.bitwise_or.reduce([stored[i] for i in cats])
                    assert np.array_equal(mask.numpy(), union)
                    seen += len(cats) > 1
    if fmt == "coco":
        assert seen > 0  # some images hold several instances of a category


def test_question_expressions_are_asked_as_written():
    turns = referring_turns(["What is the animal that jumps?", "the red car."], "<IMG>",
                            np.random.default_rng(0), Wording(seg_questions=("Find {phrase}.",)))
    assert turns[0]["input"] == "<IMG>What is the animal that jumps?"
    assert turns[1]["input"] == "Find red car."
    assert all(t["output"].count("[SEG]") == 1 for t in turns)


def test_clean_phrase_drops_one_article_and_full_stop():
    assert clean_phrase("The red box slides right.") == "red box slides right"
    assert clean_phrase("a dog") == "dog" and clean_phrase("theatre seat") == "theatre seat"


# -- encode ---------------------------------------------------------------------------------


def _decode_tokens(tok, ids):
    return tok.decode([i for i in ids if i != IGNORE_INDEX], skip_special_tokens=False)


@pytest.mark.parametrize("template", sorted(TEMPLATES))
@pytest.mark.parametrize("bos", [True, False])
def test_encode_follows_the_template_rules(template, bos):
    tok = tiny_tokenizer(bos=bos)
    enc = Encoder(tok, template)
    t = TEMPLATES[template]
    turns = [{"input": "<img><IMG_CONTEXT></img>\nq1", "output": "a1"},
             {"input": "q2", "output": "[SEG]."}]
    ids, labels = enc(turns)
    text = "".join(t.instruction.format(input=x["input"]) + x["output"] + t.suffix + t.sep
                   for x in turns)
    lead = [tok.bos_token_id] if bos else []
    assert ids[:len(lead)] == lead and tok.decode(ids[len(lead):]) == text
    assert ids.count(tok.bos_token_id) == len(lead) if bos else True
    # loss only on answers + suffix, in order
    assert _decode_tokens(tok, labels) == "".join(x["output"] + t.suffix for x in turns)
    assert all(v == IGNORE_INDEX for v, i in zip(labels, ids, strict=True)
               if i in enc.token_ids.values() and i != enc.token_ids["[SEG]"])
    assert labels[-1] == IGNORE_INDEX  # the separator has no loss


def test_encode_system_and_errors():
    tok = tiny_tokenizer()
    ids, _ = Encoder(tok, "qwen_chat", system="sys")([{"input": "q", "output": "a"}])
    assert tok.decode(ids[1:]).startswith("<|im_start|>system\nsys<|im_end|>\n<|im_start|>user")
    with pytest.raises(ValueError, match="template"):
        Encoder(tok, "vicuna")
    with pytest.raises(EncodeError, match="no_turns"):
        Encoder(tok)([])


def test_truncation_never_cuts_a_block_or_a_seg():
    tok = tiny_tokenizer()
    turns = [{"input": "<img>" + "<IMG_CONTEXT>" * 20 + "</img>\nq", "output": "[SEG]"},
             {"input": "a long follow-up question " * 4, "output": "answer " * 4}]
    full, _ = Encoder(tok, max_length=10_000)(turns)
    seg_at = full.index(tok.convert_tokens_to_ids("[SEG]"))
    ids, labels = Encoder(tok, max_length=seg_at + 1)(turns)  # cut right after the [SEG]
    assert ids == full[:seg_at + 1] and len(labels) == len(ids)
    for cut in (5, 22, seg_at):  # inside the image block, after it but before [SEG]
        with pytest.raises(EncodeError, match="too_long"):
            Encoder(tok, max_length=cut)(turns)


def test_too_long_samples_are_skipped_and_reported(builds, encoder):
    small = Encoder(encoder.tokenizer, max_length=200)  # shorter than one image block
    ds = ShardDataset(builds["coco"], LoaderConfig(gt_masks="full"), encoder=small)
    with pytest.warns(UserWarning, match="too_long"):
        assert list(ShardLoader(ds, batch_size=2, num_workers=0)) == []
    assert ds.stats["too_long"] > 0
    assert sum(ds.stats.values()) == ShardDataset(builds["coco"]).num_samples


def test_special_tokens_must_be_single_ids():
    bare = tiny_tokenizer(sa2va_tokens=False)
    with pytest.raises(ValueError, match="add_special_tokens"):
        Encoder(bare)
    added = add_special_tokens(copy.deepcopy(bare))
    assert added == len(SPECIAL_TOKENS)


def test_encoder_requires_full_resolution_masks(builds, encoder):
    with pytest.raises(ConfigError, match="gt_masks='full'"):
        ShardDataset(builds["coco"], LoaderConfig(gt_masks="image"), encoder=encoder)


# -- training smoke test --------------------------------------------------------------------


class TinySa2VA(nn.Module):
    """Token embeddings, an InternVL-geometry vision stem (patch 14 -> 32x32 -> pixel shuffle
    -> 16x16 = 256 features per tile), the model's slot filling, an LM head and a [SEG] ->
    mask head against the GT masks resized with `nearest` (uint8, as the model does)."""

    def __init__(self, vocab: int, img_context_id: int, seg_id: int, dim: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.patch = nn.Conv2d(3, dim, 28, stride=28)  # 448 / 28 = 16: patch 14 + shuffle 0.5
        self.mix = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.head = nn.Linear(dim, vocab)
        self.pix = nn.Conv2d(3, dim, 16, stride=16)  # SAM2 stand-in: 1024 -> 64x64
        self.ctx, self.seg = img_context_id, seg_id

    def forward(self, data: dict) -> torch.Tensor:
        pv = data["pixel_values"]
        tiles = torch.cat(list(pv) if isinstance(pv, list) else list(pv.unbind(0)))
        feats = self.patch(tiles).flatten(2).transpose(1, 2)  # (tiles, 256, dim), row-major
        stream, prompts = [], iter(data.get("prompt_masks") or [])
        flags = data.get("vp_overall_mask")
        for t in range(len(feats)):
            stream.append(feats[t])
            if flags is not None and flags[t]:
                m = next(prompts).reshape(-1, 256).bool()
                stream.append(feats[t].unsqueeze(0).repeat(len(m), 1, 1)[m])
        x = self.embed(data["input_ids"])
        x = x.masked_scatter((data["input_ids"] == self.ctx)[..., None], torch.cat(stream))
        h = self.mix(x) + x
        logits = self.head(h)[:, :-1]
        loss = F.cross_entropy(logits.flatten(0, 1), data["labels"][:, 1:].flatten())
        if "masks" in data:
            queries = h[data["input_ids"] == self.seg]
            pix = self.pix(torch.stack(data["g_pixel_values"]).float() / 255)  # (frames, d, 64, 64)
            logits_m, start = [], 0
            q = iter(queries.split((data["input_ids"] == self.seg).sum(1)[
                (data["input_ids"] == self.seg).sum(1) > 0].tolist()))
            gts = []
            for frames, masks in zip(data["frames_per_batch"], data["masks"], strict=True):
                qs = next(q)
                fm = pix[start:start + frames]
                start += frames
                logits_m.append(torch.einsum("od,fdhw->ofhw", qs, fm).flatten(0, 1))
                gt = F.interpolate(masks.unsqueeze(0), size=(64, 64), mode="nearest")[0]
                gts.append(gt.float())
            loss = loss + F.binary_cross_entropy_with_logits(torch.cat(logits_m), torch.cat(gts))
        return loss


@pytest.mark.parametrize("fmt,task", [("osprey", "mask_to_caption"),
                                      ("coco", "caption_to_mask"), ("sav", "caption_to_mask")])
def test_tiny_sa2va_trains_through_encode_and_collate(builds, encoder, fmt, task):
    torch.manual_seed(0)
    tok = encoder.tokenizer
    model = TinySa2VA(len(tok), encoder.img_context_id, encoder.token_ids["[SEG]"])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    cfg = LoaderConfig(task=task, gt_masks="full", max_objects=3)
    loader = ShardLoader(ShardDataset(builds[fmt], cfg, encoder=encoder), batch_size=2,
                         num_workers=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CorruptDataWarning)  # every sample served intact
        batch = next(iter(loader))
    first = model(batch).item()
    for _ in range(25):
        loss = model(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.isfinite(loss) and loss.item() < 0.8 * first


def test_min_k_skips_dialogues_and_regions_below_it(builds):
    cfg = LoaderConfig(gt_masks="none", min_k=4, k_zero="keep")
    ds = ShardDataset(builds["osprey"], cfg)
    served = list(ds)
    assert all(int(s["k"].min()) >= 4 for s in served)
    total = ShardDataset(builds["osprey"]).num_samples
    assert len(served) + ds.stats["min_k"] == total and ds.stats["min_k"] > 0
    coco = [s for s in ShardDataset(builds["coco"], replace(cfg, min_k=3))]
    assert coco and all(int(s["k"].min()) >= 3 for s in coco)
