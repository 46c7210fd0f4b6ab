"""GCG reader (GranD-f / OpenPSG, RefCOCOg-GCG, Flickr): index, faults, and parity with the
contract of Sa2VA's GCG datasets, checked on the served sample (answer text and one mask per
`[SEG]`).

The contract, as read in Sa2VA v1 `projects/llava_sam2/datasets/GCG_Dataset.py` and
`gcg_process.py` (restated in our words, re-implemented below from the raw JSON):

- GranD-f / OpenPSG: caption = stored caption without surrounding quotes and spaces; each
  non-null grounding is (phrase, `token_positives` [s, e], `rle_masks`); phrases sorted by s;
  mask = sum of the phrase's decoded RLEs (binary where they do not overlap: we take the union).
- RefCOCOg-GCG: caption as above, lower-cased; a ref counts when its sentence, lower-cased, is
  in the caption; its span starts where `caption.find(sentence)` finds it (the sentence as
  written: -1 for one with a capital letter, a Sa2VA bug we do not reproduce); mask = its
  polygons rasterised at the image size.
- Flickr: caption as stored; images whose caption splits into < 3 words on ' ' or whose short
  side is < 32 are dropped; annotations with `ignore`, a box not meeting the image, area <= 0 or
  a side < 1 are skipped; each other annotation grounds `caption[tokens_positive[0]]` with its
  `sam_mask`.
- Answer: the caption with `<p> phrase </p> [SEG]` put around each span, in span order; the
  k-th `[SEG]` predicts the k-th mask.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from sa2va_shards.build.run import run_build
from sa2va_shards.config import ReaderConfig
from sa2va_shards.errors import ConfigError
from sa2va_shards.loader import LoaderConfig, ShardDataset
from sa2va_shards.loader.grounded import gcg_answer
from sa2va_shards.readers import get_reader
from sa2va_shards.readers.gcg import GCG_FILES, find_span
from sa2va_shards.synth.gcg import FAULT_FILE, GCG_FAULTS
from tests.helpers import make_config
from tests.helpers.shards import check_faults, decode_raw, read_rejects, read_shards

N_ITEMS = 6
FILES = tuple(GCG_FILES)
EXPECTED_REASON = {
    "missing_image": "missing_image", "corrupt_image": "corrupt_image",
    "bad_rle": "bad_segmentation", "size_mismatch": "mask_size_mismatch",
    "bad_span": "bad_annotation", "no_grounding": "no_objects",
    "bad_record": "bad_annotation", "bad_polygon": "bad_segmentation",
    "short_caption": "source_filter", "small_image": "source_filter",
}
#: faults written with something ungrounded / dropped, not rejected.
WRITTEN_FAULTS = {"empty_mask", "unmatched_phrase", "ignored_ann"}


@pytest.fixture(scope="module")
def raw(synth):
    return synth("gcg", n_items=N_ITEMS, seed=7, faults=GCG_FAULTS)


@pytest.fixture(scope="module")
def builds(raw, tmp_path_factory):
    out = {}
    for stem in FILES:
        cfg = make_config(raw, tmp_path_factory.mktemp("gcg_out"), fmt="gcg", dataset=stem,
                          shards={"samples_per_shard": 4})
        cfg = cfg.__class__(**{**cfg.__dict__, "reader": ReaderConfig(
            format="gcg", root=str(raw), options={"file": stem})})
        out[stem] = run_build(cfg, runner="serial", progress=False)
    return out


def _reader(raw: Path, stem: str, **options):
    return get_reader(ReaderConfig(format="gcg", root=str(raw), options={"file": stem,
                                                                         **options}))


def _doc(raw: Path, stem: str):
    return json.loads((raw / "annotations" / f"{stem}.json").read_text())


def _fault_ids(raw: Path) -> dict[str, str]:
    """fault kind -> source id, found from the raw JSON (fault images are fault_<kind>.jpg)."""
    ids = {}
    for stem in FILES:
        doc = _doc(raw, stem)
        if stem.startswith("flickr"):
            for img in doc["images"]:
                if img["file_name"].startswith("fault_"):
                    ids[img["file_name"][6:-4]] = f"{stem}_{img['id']:012d}"
            continue
        for i, rec in enumerate(doc):
            rec = next(iter(rec.values())) if stem.startswith("RefCOCOg") else rec
            if rec["img_file_name" if stem.startswith("RefCOCOg") else "file_name"].startswith(
                    "fault_"):
                name = rec.get("file_name") or rec["img_file_name"]
                ids[name[6:-4]] = f"{stem}_{i:07d}"
    return ids


# --- the reference model of Sa2VA's reading (see the module docstring) -----------------------

def _decode(rle: dict) -> np.ndarray:
    r = {"size": rle["size"], "counts": rle["counts"].encode()}
    return mask_utils.decode(r)


def sa2va_grandf(rec: dict) -> tuple[str, list[tuple[int, int]], list[np.ndarray]]:
    caption = rec["caption"].strip('"').strip()
    items = sorted(((g["token_positives"], g["rle_masks"]) for g in rec["groundings"].values()
                    if g is not None), key=lambda x: x[0][0])
    masks = [(sum(_decode(r).astype(np.int64) for r in rles) > 0).astype(np.uint8)
             for _, rles in items]
    return caption, [tuple(s) for s, _ in items], masks


def sa2va_refcocog_spans(rec: dict) -> tuple[str, list[tuple[int, int]]]:
    caption = rec["caption"].strip('"').strip().lower()
    spans = []
    for ref in rec["refs"]:
        if ref["sentence"].lower() in caption:
            at = caption.find(ref["sentence"])
            spans.append((at, at + len(ref["sentence"])) if at != -1 else (-1, -1))
    return caption, sorted(spans)


def sa2va_v2_refcocog_spans(rec: dict) -> list[tuple[int, int]]:
    """Sa2VA v2 (`sa2va_data_05_gcg.py`): the lower-cased sentence is searched; no cut."""
    caption = rec["caption"].strip('"').strip().lower()
    return sorted((caption.find(r["sentence"].lower()),
                   caption.find(r["sentence"].lower()) + len(r["sentence"]))
                  for r in rec["refs"] if r["sentence"].lower() in caption)


def sa2va_flickr(img: dict, anns: list[dict]) -> tuple[str, list, list] | None:
    if len(img["caption"].split(" ")) < 3 or min(img["height"], img["width"]) < 32:
        return None
    items = []
    for a in anns:
        x, y, w, h = a["bbox"]
        iw = max(0, min(x + w, img["width"]) - max(x, 0))
        ih = max(0, min(y + h, img["height"]) - max(y, 0))
        if a.get("ignore", False) or iw * ih == 0 or a["area"] <= 0 or w < 1 or h < 1:
            continue
        items.append((tuple(a["tokens_positive"][0]), _decode(a["sam_mask"])))
    items.sort(key=lambda x: x[0][0])
    return img["caption"], [s for s, _ in items], [m for _, m in items]


def _served(build) -> dict[str, dict]:
    """source id -> the light loader sample (task gcg, full-resolution masks, stored order)."""
    cfg = LoaderConfig(task="gcg", gt_masks="full", shuffle=False)
    return {s["meta"]["source_id"]: s for s in ShardDataset(build.build_dir, cfg)}


def _masks(sample: dict) -> np.ndarray:
    h = sample["meta"]["height"]
    bits = np.unpackbits(sample["gt_masks"].numpy(), axis=-1)[..., :h]
    return bits.transpose(0, 2, 1)


# --- tests -----------------------------------------------------------------------------------

def test_list_items_indexes_every_record_once_sorted(raw):
    for stem in FILES:
        doc = _doc(raw, stem)
        items = _reader(raw, stem).list_items()
        n = len(doc["images"]) if stem.startswith("flickr") else len(doc)
        ids = [r.source_id for r in items]
        assert len(items) == n and ids == sorted(set(ids))
        json.dumps([r.data for r in items])  # the light index is plain JSON


def test_schema_and_image_folder_follow_the_file_and_bad_options_are_config_errors(raw):
    r = _reader(raw, "OpenPsgGCG_train")
    assert (r.schema, r.images) == ("grandf", "images/coco2017")
    assert pickle.loads(pickle.dumps(r)) == r
    with pytest.raises(ConfigError, match="not a known GCG file"):
        _reader(raw, "my_gcg")
    assert _reader(raw, "my_gcg", schema="grandf", images="x").schema == "grandf"
    with pytest.raises(ConfigError, match="not found"):
        _reader(raw.parent, "GranDf_HA_GCG_train").list_items()


def test_every_input_is_written_or_rejected_with_its_reason(raw, builds):
    ids = _fault_ids(raw)
    assert set(ids) == set(GCG_FAULTS)
    for stem, build in builds.items():
        expected = {ids[f]: r for f, r in EXPECTED_REASON.items() if FAULT_FILE[f] == stem}
        objects = {ids["empty_mask"]: "empty_mask"} if stem == FAULT_FILE["empty_mask"] else {}
        check_faults(build, expected, objects)
        n_faults = sum(FAULT_FILE[f] == stem for f in GCG_FAULTS)
        assert build.counts["read"] == N_ITEMS + n_faults
        assert build.counts["written"] == N_ITEMS + sum(
            FAULT_FILE[f] == stem for f in WRITTEN_FAULTS)
    rows = {r["source_id"]: r for b in builds.values() for r in read_rejects(b.build_dir)}
    assert rows[ids["size_mismatch"]]["stage"] == "decode"  # RLE size != the JSON size


def test_ungrounded_phrases_are_kept_with_a_reason(raw, builds):
    ids = _fault_ids(raw)
    metas = {json.loads(m["json"])["source_id"]: json.loads(m["json"])
             for b in builds.values() for m in read_shards(b.build_dir).values()}
    assert [u["reason"] for u in metas[ids["unmatched_phrase"]]["gcg"]["ungrounded"]] == [
        "sentence_not_in_caption"]
    assert [u["reason"] for u in metas[ids["ignored_ann"]]["gcg"]["ungrounded"]] == [
        "ignore_flag"]
    assert len(metas[ids["ignored_ann"]]["objects"]) == 1


@pytest.mark.parametrize("stem", ["GranDf_HA_GCG_train", "OpenPsgGCG_train"])
def test_grandf_answer_and_masks_match_sa2va(raw, builds, stem):
    doc, served = _doc(raw, stem), _served(builds[stem])
    checked = 0
    for i, rec in enumerate(doc):
        sid = f"{stem}_{i:07d}"
        if rec["file_name"].startswith("fault_") or sid not in served:
            continue
        caption, spans, masks = sa2va_grandf(rec)
        s = served[sid]
        assert s["conversation"][0]["output"] == gcg_answer(caption, [list(x) for x in spans])
        assert s["seg"] == len(masks) == s["conversation"][0]["output"].count("[SEG]")
        assert np.array_equal(_masks(s), np.stack(masks))
        checked += 1
    assert checked == N_ITEMS


def test_refcocog_spans_match_sa2va_except_its_case_sensitive_search(raw, builds):
    stem = "RefCOCOg_GCG_train"
    doc, served = _doc(raw, stem), _served(builds[stem])
    exact = bug = 0
    for i, elem in enumerate(doc):
        rec = next(iter(elem.values()))
        sid = f"{stem}_{i:07d}"
        if rec["img_file_name"].startswith("fault_"):
            continue
        caption, sa2va_spans = sa2va_refcocog_spans(rec)
        s = served[sid]
        ours = [tuple(o["span"]) for o in s["meta"]["objects"]]
        assert s["meta"]["gcg"]["caption"] == caption
        want = sorted(find_span(r["sentence"], caption) for r in rec["refs"])
        overlap = any(a[1] > b[0] for a, b in zip(want, want[1:], strict=False))
        if overlap:  # cut at the next phrase's start: no two spans overlap
            assert [a for a, _ in ours] == [a for a, _ in want]
            assert all(a[1] <= b[0] for a, b in zip(ours, ours[1:], strict=False))
        else:
            assert ours == want == sa2va_v2_refcocog_spans(rec)
            assert [caption[a:b] for a, b in ours] == sorted(
                (r["sentence"].lower() for r in rec["refs"]), key=caption.find)
        if (-1, -1) in sa2va_spans:  # Sa2VA's search misses a capitalised sentence
            assert set(sa2va_spans) - {(-1, -1)} <= set(want)
            bug += 1
        elif not overlap:
            assert ours == sa2va_spans
            exact += 1
        assert s["conversation"][0]["output"] == gcg_answer(caption, [list(x) for x in ours])
    assert exact >= 2 and bug >= 2


def test_refcocog_masks_are_the_polygons_at_the_image_size(raw, builds):
    stem = "RefCOCOg_GCG_train"
    doc, served = _doc(raw, stem), _served(builds[stem])
    for i, elem in enumerate(doc):
        s = served.get(f"{stem}_{i:07d}")
        if s is None:
            continue
        rec, meta = next(iter(elem.values())), s["meta"]
        want = [decode_raw(rec["refs"][o["ref"]]["segmentation"], meta["height"], meta["width"])
                for o in meta["objects"]]
        assert np.array_equal(_masks(s), np.stack(want))


def test_flickr_filters_answer_and_masks_match_sa2va(raw, builds):
    stem = "flickr_mergedGT_GCG_train"
    doc, served = _doc(raw, stem), _served(builds[stem])
    kept = 0
    for img in doc["images"]:
        sid = f"{stem}_{img['id']:012d}"
        ref = sa2va_flickr(img, [a for a in doc["annotations"] if a["image_id"] == img["id"]])
        assert (ref is None) == (sid not in served)
        if ref is None:
            continue
        caption, spans, masks = ref
        s = served[sid]
        assert s["conversation"][0]["output"] == gcg_answer(caption, [list(x) for x in spans])
        assert np.array_equal(_masks(s), np.stack(masks))
        kept += 1
    assert kept == N_ITEMS + 1


def test_gcg_answer_tags_spans_in_order_and_refuses_overlaps():
    assert gcg_answer("a dog and a cat.", [[10, 15], [0, 5]]) == (
        "<p> a dog </p> [SEG] and <p> a cat </p> [SEG].")
    assert gcg_answer("plain", []) == "plain"
    with pytest.raises(ValueError, match="overlaps"):
        gcg_answer("a dog and a cat.", [[0, 5], [3, 8]])


def test_a_gcg_build_serves_only_gcg(builds):
    build = builds["GranDf_HA_GCG_train"].build_dir
    with pytest.raises(ConfigError, match="serves gcg"):
        ShardDataset(build, LoaderConfig(task="caption_to_mask"))
    tasks = {s["task"] for s in ShardDataset(build, LoaderConfig(task="mixed"))}
    assert tasks == {"gcg"}


def test_gcg_builds_verify(builds):
    from sa2va_shards.verify import verify_build

    for build in builds.values():
        report = verify_build(build.build_dir)
        assert report.ok, report.problems
