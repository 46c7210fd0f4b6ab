"""Shared fixtures: one local Ray per test session, synthesised raw datasets, build configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sa2va_shards.synth import synth_dataset

try:  # property tests: the same examples on every run (CI must not fail at random); set
    # HYPOTHESIS_PROFILE=explore to search new ones
    from hypothesis import settings

    settings.register_profile("repro", derandomize=True, deadline=None)
    settings.register_profile("explore", deadline=None)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repro"))
except ImportError:
    pass


@pytest.fixture(scope="session")
def ray_local():
    """A 2-CPU local Ray shared by the whole session (init costs ~4 s)."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def synth(tmp_path_factory):
    """synth(format, n_items=.., seed=.., faults=(..)) -> root of a real-format raw dataset,
    written once per session per parameter set."""
    cache: dict[tuple, Path] = {}

    def make(fmt: str, *, n_items: int = 12, seed: int = 0, faults: tuple[str, ...] = ()) -> Path:
        key = (fmt, n_items, seed, tuple(faults))
        if key not in cache:
            out = tmp_path_factory.mktemp(f"raw_{fmt}")
            cache[key] = synth_dataset(fmt, out, n_items=n_items, seed=seed, faults=faults)
        return cache[key]

    return make


@pytest.fixture(scope="module")
def encoder():
    """Sa2VA-4B's chat template over a tokenizer built locally (never downloaded)."""
    from sa2va_shards.loader.encode import Encoder
    from tests.helpers.tokenizer import tiny_tokenizer

    return Encoder(tiny_tokenizer(), "phi3_chat")
