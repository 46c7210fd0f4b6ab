"""Only vision geometry InternVL can run is a valid config: the grid must be a whole number of
pixel-shuffled patches, so every K and `<IMG_CONTEXT>` count is what the model produces."""

from __future__ import annotations

import pytest

from sa2va_shards.config import parse_config
from sa2va_shards.errors import ConfigError


def _vision(**vision):
    return parse_config({"dataset": "g", "reader": {"format": "coco", "root": "."},
                         "vision": vision}).vision


@pytest.mark.parametrize("vision, grid", [
    ({}, 16),                                                  # InternVL 448 / 14 * 0.5
    ({"patch_size": 16}, 14),                                  # 28 patches, even
    ({"image_size": 224, "patch_size": 14}, 8),
    ({"downsample_ratio": 0.25}, 8),                           # 32 patches, 4 x 4 merged
    ({"downsample_ratio": 1}, 32),                             # no pixel shuffle
])
def test_geometry_internvl_can_run_is_accepted(vision, grid):
    assert _vision(**vision).grid == grid


@pytest.mark.parametrize("vision, why", [
    ({"patch_size": 15}, "does not divide vision.image_size 448"),
    ({"image_size": 462}, "33 patches a side"),                # 462 / 14: odd, ratio 0.5
    ({"image_size": 462}, "an even patch count is needed"),
    ({"downsample_ratio": 0.3}, "is not 1/n"),
    ({"downsample_ratio": 2.0}, "is not 1/n"),
    ({"patch_size": 16, "downsample_ratio": 0.125}, "not divisible by 8"),  # 28 patches
])
def test_geometry_internvl_cannot_use_is_a_config_error_that_says_why(vision, why):
    with pytest.raises(ConfigError, match="InternVL") as e:
        _vision(**vision)
    assert why in str(e.value)
