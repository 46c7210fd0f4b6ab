"""Device-side image decode (`LoaderConfig.image_decode`). No GPU here: the CUDA choice is
tested as a decision, and the deferred path runs on the CPU, where it must give exactly the
worker path's batches (same decode, same resize kernel)."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from sa2va_shards.build.run import run_build
from sa2va_shards.errors import SampleError
from sa2va_shards.loader import LoaderConfig, ShardDataset, ShardLoader, gpu_decode
from sa2va_shards.loader.encode import Encoder
from tests.helpers import make_config
from tests.helpers.tokenizer import tiny_tokenizer


@pytest.fixture(scope="module")
def build(synth, tmp_path_factory):
    """Default `auto` store: kept sources and resized squashes in one build."""
    raw = synth("coco", n_items=12, seed=11)
    cfg = make_config(raw, tmp_path_factory.mktemp("gpu"), image={"tiles": 6},
                      shards={"samples_per_shard": 4})
    return run_build(cfg, runner="serial", progress=False).build_dir


def test_cuda_decode_is_chosen_only_with_cuda_and_torchvision(monkeypatch):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert not gpu_decode.wanted("worker", cuda) and gpu_decode.wanted("device", cpu)
    assert not gpu_decode.wanted("auto", cpu) and not gpu_decode.wanted("auto", None)
    monkeypatch.setattr(gpu_decode, "torchvision_decode_jpeg", lambda: None)
    assert not gpu_decode.wanted("auto", cuda)  # no torchvision: the CPU path
    monkeypatch.setattr(gpu_decode, "torchvision_decode_jpeg", lambda: object())
    assert gpu_decode.wanted("auto", cuda)
    with pytest.raises(ValueError, match="image_decode"):
        LoaderConfig(image_decode="gpu")


def _batches(build, mode: str, workers: int, encoder=None):
    cfg = LoaderConfig(gt_masks="full" if encoder else "1024", max_tiles=6, shuffle=False,
                       image_decode=mode)
    return list(ShardLoader(ShardDataset(build, cfg, encoder=encoder), batch_size=4,
                            num_workers=workers, device="cpu"))


@pytest.mark.parametrize("workers", [0, 2])
def test_deferred_decode_gives_the_worker_paths_batch(build, workers):
    worker, deferred = _batches(build, "worker", workers), _batches(build, "device", workers)
    assert len(worker) == len(deferred) and sum(b["batch_size"] for b in deferred) == 12
    stores = set()
    for a, b in zip(worker, deferred, strict=True):
        assert a["keys"] == b["keys"]
        for name in ("g_pixel_values", "pixel_values", "tiles"):
            assert torch.equal(a[name], b[name]), name
        stores |= {m["image_store"] for m in b["meta"]}
    assert stores == {"original", "resized"}  # both kinds went through the deferred path


def test_deferred_decode_serves_the_model_dict(build):
    encoder = Encoder(tiny_tokenizer(), "phi3_chat")
    worker = _batches(build, "worker", 0, encoder)
    deferred = _batches(build, "device", 0, encoder)
    for a, b in zip(worker, deferred, strict=True):
        assert torch.equal(a["input_ids"], b["input_ids"])
        for x, y in zip(a["pixel_values"], b["pixel_values"], strict=True):
            assert torch.equal(x, y)
        assert a.keys() == b.keys()  # nothing of the deferred path leaks into the dict


def test_the_worker_still_checks_what_it_ships():
    buf = io.BytesIO()
    Image.new("RGB", (64, 48)).save(buf, "JPEG")
    data = buf.getvalue()
    record = gpu_decode.defer_image(data, {"image_store": "original", "height": 48,
                                           "width": 64}, 1024)
    assert record["original"] and bytes(record["data"].numpy()) == data
    with pytest.raises(SampleError, match="inconsistent"):  # a resized sample must be S x S
        gpu_decode.defer_image(data, {"image_store": "resized"}, 1024)
    with pytest.raises(SampleError, match="corrupt_image"):
        gpu_decode.defer_image(b"not a jpeg", {}, 1024)
