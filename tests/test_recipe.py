"""The Sa2VA-4B recipe (`configs/recipes/sa2va_4b_v1/`) as a miniature: every build config on
synthetic data in its real format, both mixtures served for one epoch with the intended
proportions, every batch of the v1 epoch checked against the model's slot and `[SEG]` rules,
and one optimisation step of the tiny Sa2VA-shaped model on a batch mixing the tasks."""

from __future__ import annotations

import warnings

import pytest
import torch

from pipeline.recipe_demo import RECIPE, build_miniature, proportions
from sa2va_shards.config import VisionConfig, load_config
from sa2va_shards.loader import CorruptDataWarning, LoaderConfig, ShardDataset, ShardLoader
from sa2va_shards.loader.encode import Encoder
from sa2va_shards.loader.mixture import load_mixture
from tests.helpers.sa2va_model import fill_slots, seg_targets
from tests.helpers.tokenizer import tiny_tokenizer
from tests.test_sa2va import TinySa2VA

TOKENS = VisionConfig().tokens_per_image


@pytest.fixture(scope="module")
def mixes(tmp_path_factory):
    return build_miniature(tmp_path_factory.mktemp("recipe"))


def test_every_mixture_source_is_a_recipe_build_config():
    datasets = {load_config(p).dataset for p in RECIPE.glob("*.yaml")}
    for path in (RECIPE / "mix").glob("*.yaml"):
        builds = {s.build.name for s in load_mixture(path).sources}
        assert builds <= datasets, builds - datasets
    assert {p.stem for p in (RECIPE / "mix").glob("*.yaml")} == {"v1", "v2_in30_8b"}


@pytest.mark.parametrize("name", ["v1", "v2_in30_8b"])
def test_a_miniature_epoch_realises_the_intended_proportions(mixes, name):
    rows = proportions(mixes[name])
    assert all(r.size > 0 for r in rows), [r.name for r in rows if r.size == 0]
    for r in rows:
        assert r.intended == round(r.repeat * r.size)
        if r.name != "osprey_v2":  # every planned sample is served
            assert r.served == r.intended, r
    assert sum(r.intended for r in rows) == ShardDataset(
        mixes[name], LoaderConfig(task="mixed", gt_masks="full")).num_samples
    if name == "v2_in30_8b":  # Sa2VA v2's minimum of 4 cells drops synthetic tiny regions
        osprey = next(r for r in rows if r.name == "osprey_v2")
        assert 0 < osprey.skipped < osprey.intended


class _TinySa2VA(TinySa2VA):
    """The test model, dropping all-zero tiles first as Sa2VA's model does (`image_flags`):
    a pure-text sample's dummy tile has no slot."""

    def forward(self, data: dict) -> torch.Tensor:
        pv = data["pixel_values"]
        per_sample = list(pv) if isinstance(pv, list) else list(pv.unbind(0))
        keep = [t.flatten(1).sum(1) != 0 for t in per_sample]
        data = {**data, "pixel_values": [t[k] for t, k in zip(per_sample, keep, strict=True)]}
        if "vp_overall_mask" in data:
            data["vp_overall_mask"] = data["vp_overall_mask"][torch.cat(keep)]
        return super().forward(data)


def _row_kinds(data: dict, encoder: Encoder) -> set[str]:
    """What the rows of a model batch exercise: region prompts, [SEG] targets, a zero tile
    (pure text), or plain text about a picture."""
    pv = data["pixel_values"]
    per_sample = list(pv) if isinstance(pv, list) else list(pv.unbind(0))
    seg = (data["input_ids"] == encoder.token_ids["[SEG]"]).sum(1)
    vp = (data["input_ids"] == encoder.token_ids["<vp>"]).sum(1)
    kinds = set()
    for b, tiles in enumerate(per_sample):
        kinds.add("vp" if vp[b] else "seg" if seg[b] else
                  "text" if float(tiles.abs().sum()) == 0 else "picture")
    return kinds


def test_the_v1_epoch_feeds_the_model_and_one_step_trains(mixes):
    encoder = Encoder(tiny_tokenizer(), "phi3_chat")
    cfg = LoaderConfig(task="mixed", gt_masks="full", seed=3)
    served = {s["task"] for s in ShardDataset(mixes["v1"], cfg)}
    assert served == {"caption_to_mask", "mask_to_caption", "gcg", "chat"}
    loader = ShardLoader(ShardDataset(mixes["v1"], cfg, encoder=encoder), batch_size=6,
                         num_workers=0)
    best, rows = None, 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", CorruptDataWarning)
        for data in loader:
            fill_slots(data, encoder.img_context_id, TOKENS)  # every slot, every tile
            seg_targets(data, encoder.token_ids["[SEG]"])  # [SEG] count == masks per row
            rows += len(data["input_ids"])
            if best is None or len(_row_kinds(data, encoder)) > len(_row_kinds(best, encoder)):
                best = data
    assert rows == sum(r.intended for r in proportions(mixes["v1"]))
    assert len(_row_kinds(best, encoder)) >= 3
    torch.manual_seed(0)
    model = _TinySa2VA(len(encoder.tokenizer), encoder.img_context_id,
                       encoder.token_ids["[SEG]"])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = model(best)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_sa2va_sampler_model_never_reaches_the_tail():
    """Sizes 10 (x4, reports 10), 20 (x1), 30 (x1): N = 90, M = 60; the tail source is never
    drawn and the reachable positions are drawn 1.5 times each."""
    from pipeline.recipe_demo import ProportionRow, sa2va_sampler

    rows = [ProportionRow(name=n, size=s, repeat=r, intended=s * r, served=0, skipped=0)
            for n, s, r in (("video", 10, 4), ("a", 20, 1), ("tail", 30, 1))]
    assert sa2va_sampler(rows, frozenset({"video"})) == [60.0, 30.0, 0.0]
    assert sa2va_sampler(rows, frozenset()) == [40.0, 20.0, 30.0]
