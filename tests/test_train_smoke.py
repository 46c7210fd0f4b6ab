"""A few optimisation steps of a tiny InternVL-shaped model on shards built here (CPU).

The model has InternVL's geometry (448 input, patch-14 conv -> 32x32, pixel shuffle 0.5 ->
16x16 = 256 tokens) and consumes the batch the way Sa2VA's internvl.py does: the flattened
prompt mask boolean-indexes the thumbnail's 256 features, so region i contributes K_i vectors.
It runs the seed's checks: prompt-mask size, vision-feature size, K in [1, 256].
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sa2va_shards.build.run import run_build
from sa2va_shards.config import VisionConfig
from sa2va_shards.loader import LoaderConfig, ShardDataset, ShardLoader
from sa2va_shards.synth.coco import CATEGORIES
from tests.helpers import make_config


class ShapeWarning(UserWarning):
    """What the seed's training run warns about."""


def pixel_shuffle(x: torch.Tensor, scale: float) -> torch.Tensor:
    """InternVL's pixel_shuffle (ps_version v2) on (n, rows, cols, c)."""
    n, w, h, c = x.size()
    x = x.view(n, w, int(h * scale), int(c / scale)).permute(0, 2, 1, 3).contiguous()
    x = x.view(n, int(h * scale), int(w * scale), int(c / (scale * scale)))
    return x.permute(0, 2, 1, 3).contiguous()


class TinyInternVL(nn.Module):
    """Patch conv + pixel shuffle + projection, a region classifier and a 16x16 mask head."""

    def __init__(self, vision: VisionConfig, *, channels: int = 8, dim: int = 32,
                 classes: int = len(CATEGORIES)) -> None:
        super().__init__()
        self.vision = vision
        self.patch = nn.Conv2d(3, channels, vision.patch_size, stride=vision.patch_size)
        scale = vision.downsample_ratio
        self.proj = nn.Linear(int(channels / scale / scale), dim)
        self.cls = nn.Linear(dim, classes)
        self.mask = nn.Linear(dim, 1)

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, 448, 448) -> (B, 256, dim), token k = grid cell (k // 16, k % 16)."""
        x = self.patch(pixel_values).permute(0, 2, 3, 1).contiguous()  # (B, 32, 32, C), rows first
        x = pixel_shuffle(x, self.vision.downsample_ratio)
        return self.proj(x.flatten(1, 2))

    def region_features(self, feats: torch.Tensor, prompt: torch.Tensor,
                        k: torch.Tensor) -> torch.Tensor:
        """Sa2VA's scatter: tile.repeat(n_obj)[mask.reshape(n_obj, 256)] -> (sum K, dim)."""
        grid, tokens = self.vision.grid, self.vision.tokens_per_image
        if prompt.shape[-2:] != (grid, grid):
            warnings.warn(f"prompt mask size {tuple(prompt.shape[-2:])} != {grid}x{grid}",
                          ShapeWarning, stacklevel=2)
        if feats.shape[0] != tokens:
            warnings.warn(f"vision features {feats.shape[0]} != {tokens}", ShapeWarning,
                          stacklevel=2)
        bad = ((k < 1) | (k > tokens)).nonzero().flatten().tolist()
        if bad:
            warnings.warn(f"K outside [1, {tokens}] for regions {bad}: {k.tolist()}",
                          ShapeWarning, stacklevel=2)
        n = prompt.shape[0]
        selected = feats.unsqueeze(0).repeat(n, 1, 1)[prompt.reshape(n, tokens)]
        assert selected.shape[0] == int(k.sum())
        return selected

    def loss(self, batch: dict) -> torch.Tensor:
        feats = self.features(batch["pixel_values"])
        losses = []
        for i, (prompt, k) in enumerate(zip(batch["prompt_masks"], batch["k"], strict=True)):
            sel = self.region_features(feats[i], prompt, k)
            owner = torch.repeat_interleave(torch.arange(len(k)), k)
            for j in range(len(k)):  # exactly K_i vectors belong to region j
                assert int((owner == j).sum()) == int(k[j])
            pooled = torch.zeros(len(k), sel.shape[1]).index_add_(0, owner, sel) / k[:, None]
            labels = torch.tensor([CATEGORIES.index(o["category"]) for o in batch["objects"][i]])
            losses.append(F.cross_entropy(self.cls(pooled), labels))
            gt = F.interpolate(batch["image_masks"][i][None].float(), size=prompt.shape[-2:],
                               mode="nearest")[0]  # the 16x16 target: the prompt grid
            logits = self.mask(feats[i]).reshape(1, *prompt.shape[-2:]).expand_as(gt)
            losses.append(F.binary_cross_entropy_with_logits(logits, gt))
        return torch.stack(losses).mean()


@pytest.fixture(scope="module")
def shards(synth, tmp_path_factory):
    root = synth("coco", n_items=8, seed=5)
    cfg = make_config(root, tmp_path_factory.mktemp("smoke"), dataset="smoke",
                      shards={"samples_per_shard": 3})
    return run_build(cfg, runner="serial", progress=False).build_dir


def test_pixel_shuffle_keeps_raster_token_order():
    vision = VisionConfig()
    model = TinyInternVL(vision)
    x = torch.arange(32 * 32, dtype=torch.float32).view(1, 32, 32, 1)  # value = row*32+col
    out = pixel_shuffle(x, 0.5)[0].reshape(vision.tokens_per_image, 4)
    rows, cols = torch.arange(256) // 16, torch.arange(256) % 16
    assert torch.equal(out.min(1).values, (2 * rows * 32 + 2 * cols).float())
    assert model.features(torch.zeros(1, 3, 448, 448)).shape == (1, 256, 32)


def test_tiny_model_trains_on_shards(shards):
    torch.manual_seed(0)
    cfg = LoaderConfig(max_objects=3, gt_masks="image")
    model = TinyInternVL(cfg.vision)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loader = ShardLoader(ShardDataset(shards, cfg), batch_size=2, num_workers=2, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ShapeWarning)  # K = 0 dropped: no warning allowed
        batches = list(loader)
        for batch in batches:
            loss = model.loss(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            assert torch.isfinite(loss)
        first = model.loss(batches[0]).item()
        for _ in range(15):  # overfit one batch: the gradients reach the right features
            loss = model.loss(batches[0])
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert loss.item() < first


def test_k_zero_regions_trigger_the_seed_warning(shards):
    cfg = LoaderConfig(k_zero="keep", gt_masks="image", shuffle=False)
    batch = next(b for b in ShardLoader(ShardDataset(shards, cfg), batch_size=8, num_workers=0,
                                        device="cpu"))
    assert any((k == 0).any() for k in batch["k"])
    with pytest.warns(ShapeWarning, match=r"K outside \[1, 256\]"):
        TinyInternVL(cfg.vision).loss(batch)
