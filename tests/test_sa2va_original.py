"""The Sa2VA model input dict from `image.store: original` builds: every image format x task
fills the model's slots exactly as a resized build does (the check of tests/test_sa2va.py),
and the images the model gets are the kept source's."""

from __future__ import annotations

import pytest

from sa2va_shards.loader import LoaderConfig, ShardDataset
from tests.helpers import build_demo_formats
from tests.test_sa2va import SERVES, TASKS, VIDEO
from tests.test_sa2va import test_every_build_and_task_fills_the_models_slots as check_slots

IMAGE_FORMATS = [fmt for fmt in SERVES if fmt not in VIDEO]


@pytest.fixture(scope="module")
def builds(synth, tmp_path_factory):
    """Every image demo format, built with the sources kept."""
    return build_demo_formats(synth, tmp_path_factory.mktemp("sa2va_original"), IMAGE_FORMATS,
                              n_items=lambda fmt: 6, image={"store": "original"})


@pytest.mark.parametrize("fmt", IMAGE_FORMATS)
@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("max_tiles", [0, 6])
def test_original_builds_fill_the_models_slots(builds, encoder, fmt, task, max_tiles):
    check_slots(builds, encoder, fmt, task, max_tiles)


@pytest.mark.parametrize("fmt", IMAGE_FORMATS)
def test_original_builds_keep_their_sources(builds, fmt):
    samples = list(ShardDataset(builds[fmt], LoaderConfig(gt_masks="none", shuffle=False)))
    # plain RGB JPEGs are kept; the synth's gray and CMYK ones are stored resized
    assert any(s["meta"]["image_store"] == "original" for s in samples)
    assert all(s["image"].shape == (1, 1024, 1024, 3) for s in samples)
    assert all(s["thumb"].shape == (448, 448, 3) for s in samples
               if s["meta"]["image_store"] == "original")
