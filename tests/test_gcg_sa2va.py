"""GCG builds served as Sa2VA's model input dict: every `<IMG_CONTEXT>` slot receives its own
tile's features, no region prompts, one `[SEG]` per grounded phrase paired with that phrase's
mask, and the answer (the tagged caption) is what the labels train on."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from sa2va_shards.build.run import run_build
from sa2va_shards.config import VisionConfig, parse_config
from sa2va_shards.loader import CorruptDataWarning, LoaderConfig, ShardDataset, ShardLoader
from sa2va_shards.loader.encode import IGNORE_INDEX
from sa2va_shards.readers.gcg import GCG_FILES
from tests.helpers.sa2va_model import fill_slots, seg_targets

TOKENS = VisionConfig().tokens_per_image


@pytest.fixture(scope="module")
def builds(synth, tmp_path_factory):
    root, out = synth("gcg", n_items=4, seed=11), tmp_path_factory.mktemp("gcg_sa2va")
    result = {}
    for stem in GCG_FILES:
        cfg = parse_config({"dataset": stem, "reader": {"format": "gcg", "root": str(root),
                                                        "options": {"file": stem}},
                            "shards": {"samples_per_shard": 3}, "out": str(out)})
        result[stem] = run_build(cfg, runner="serial", progress=False).build_dir
    return result


@pytest.mark.parametrize("stem", list(GCG_FILES))
@pytest.mark.parametrize("max_tiles", [0, 6])
def test_gcg_batches_fill_the_models_slots_and_pair_seg_with_masks(builds, encoder, stem,
                                                                   max_tiles):
    cfg = LoaderConfig(task="gcg", gt_masks="full", max_tiles=max_tiles)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CorruptDataWarning)
        batches = list(ShardLoader(ShardDataset(builds[stem], cfg, encoder=encoder),
                                   batch_size=3, num_workers=0))
    seg_id, rows_seen = encoder.token_ids["[SEG]"], 0
    for data in batches:
        rows = fill_slots(data, encoder.img_context_id, TOKENS)
        starts = np.cumsum([0, *[len(t) for t in data["pixel_values"]]])
        for b, slots in enumerate(rows):  # image slots only, this row's tiles in order
            assert slots == [("tile", t, c) for t in range(starts[b], starts[b + 1])
                             for c in range(TOKENS)]
        assert "vp_overall_mask" not in data and "prompt_masks" not in data
        targets = seg_targets(data, seg_id)
        assert [r for r, _ in targets] == list(range(len(rows)))
        for row, masks in targets:
            assert masks.dtype == torch.uint8 and int(masks.max()) == 1
            labels = data["labels"][row]
            # every [SEG] is in the answer, so every one is trained on
            assert int((labels == seg_id).sum()) == len(masks)
            assert int((labels != IGNORE_INDEX).sum()) > len(masks)
        rows_seen += len(rows)
    assert rows_seen == ShardDataset(builds[stem], LoaderConfig(task="gcg")).num_samples


def test_seg_k_predicts_the_phrase_k_mask(builds):
    """The k-th [SEG] follows the k-th phrase of the caption; its GT mask is that phrase's
    stored mask (object k of the sample)."""
    cfg = LoaderConfig(task="gcg", gt_masks="full", gt_format="dense", shuffle=False)
    for s in ShardDataset(builds["GranDf_HA_GCG_train"], cfg):
        answer = s["conversation"][0]["output"]
        phrases = [p.split(" </p>")[0] for p in answer.split("<p> ")[1:]]
        assert phrases == [o["phrase"] for o in s["meta"]["objects"]] == s["texts"]
        assert s["gt_masks"].shape[0] == len(phrases) == s["seg"]
        assert s["object_index"] == [[i] for i in range(len(phrases))]
