"""Hostile inputs per reader (issue 10): damaged Describe-Anything tars, malformed RefCOCO refs,
Osprey elements and Ref-SAV expressions, SA-V videos that are not what they claim. One bad
input is a reject with a reason; the rest of the set is built."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import tarfile
import tempfile
from pathlib import Path

import av
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sa2va_shards.build.plan import plan_shards
from sa2va_shards.build.run import run_build
from sa2va_shards.errors import Reason, SampleError
from sa2va_shards.readers._safe_pickle import safe_loads
from sa2va_shards.readers.describe_anything import DescribeAnythingReader
from sa2va_shards.readers.osprey import OspreyReader
from sa2va_shards.readers.refcoco import RefCocoReader
from sa2va_shards.readers.sav import SavReader
from sa2va_shards.records import BAD_ITEM
from sa2va_shards.synth.common import refused_pickle
from tests.helpers import make_config
from tests.helpers.hostile import touch_exploit
from tests.helpers.shards import read_rejects


def _bad(items) -> dict[str, dict]:
    return {i.source_id: i.data[BAD_ITEM] for i in items if BAD_ITEM in i.data}


# --- pickles: the package's fault is harmless, the tests' exploit is real ---------------------

def test_the_synth_fault_pickle_is_refused_yet_harmless_and_the_test_exploit_is_real(tmp_path):
    """The installed package ships no code-running pickle: its `unsafe_pickle` fault names a
    class (refused, harmless under plain pickle). The os.system exploit the hostile tests feed
    the readers really runs under plain pickle, so their 'never ran' checks mean something."""
    fault = refused_pickle([{"caption": "x"}])
    with pytest.raises(SampleError) as info:
        safe_loads(fault, name="fault.pickle")
    assert info.value.reason is Reason.UNSAFE_PICKLE
    assert pickle.loads(fault) == {"data": [{"caption": "x"}]}
    marker = tmp_path / "ran"
    pickle.loads(touch_exploit(marker))  # noqa: S301 - our own exploit, run on purpose
    assert marker.exists()


# --- Describe-Anything: damaged tars ---------------------------------------------------------

@pytest.fixture(scope="module")
def dam(synth):
    return synth("describe_anything", n_items=9, seed=4)


def _headers(tar_path: Path) -> list[tuple[int, str]]:
    with tarfile.open(tar_path) as tar:
        return [(m.offset, m.name) for m in tar]


def _keys(items) -> dict[str, set[str]]:
    return {i.source_id: {n for n in ("image", "pickle") if n in i.data}
            for i in items if BAD_ITEM not in i.data}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, 10**6), pos=st.integers(0, 511), flip=st.integers(1, 255))
def test_a_flipped_header_byte_loses_no_record_silently(dam, which, pos, flip):
    """Any single damaged byte in any member header of a tar: every other record of the tar
    is still indexed whole, and the damage is a `corrupt_archive` reject (tarfile alone
    stops at the bad header and every later record vanishes)."""
    good = _keys(DescribeAnythingReader(root=str(dam)).list_items())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "raw"
        shutil.copytree(dam, root)
        tar_path = sorted(root.glob("*/images/*.tar"))[0]
        headers = _headers(tar_path)
        offset, name = headers[which % len(headers)]
        data = bytearray(tar_path.read_bytes())
        data[offset + pos] ^= flip
        tar_path.write_bytes(bytes(data))
        items = DescribeAnythingReader(root=str(root)).list_items()
    damaged_key = f"{tar_path.parent.parent.name}_{name.split('.')[0]}"
    now, bad = _keys(items), _bad(items)
    for key, members in good.items():
        if key != damaged_key:
            assert now.get(key) == members, key
    if now.get(damaged_key) != good[damaged_key]:  # the damaged member is missing: said so
        assert any(b["reason"] == Reason.CORRUPT_ARCHIVE.value for b in bad.values())
    plans, rejects = plan_shards(items, dataset="d", samples_per_shard=4)
    assert sum(len(p.items) for p in plans) + len(rejects) == len(items)


def test_garbage_after_the_end_of_a_tar_is_reported(dam, tmp_path):
    root = tmp_path / "raw"
    shutil.copytree(dam, root)
    tar_path = sorted(root.glob("*/images/*.tar"))[0]
    tar_path.write_bytes(tar_path.read_bytes() + b"\1" * 700)
    bad = _bad(DescribeAnythingReader(root=str(root), frame_records="first_frame").list_items())
    assert [b["reason"] for b in bad.values()] == [Reason.CORRUPT_ARCHIVE.value]


def test_one_unreadable_tar_does_not_stop_the_others(dam, tmp_path):
    root = tmp_path / "raw"
    shutil.copytree(dam, root)
    tars = sorted(root.glob("*/images/*.tar"))
    tars[0].write_bytes(os.urandom(3000))  # not a tar at all
    tars[1].unlink()
    os.mkfifo(tars[1])  # would block a plain open() forever
    out = run_build(make_config(root, tmp_path / "out", fmt="describe_anything"),
                    runner="serial", progress=False)
    by_id = {r["source_id"]: r["reason"] for r in read_rejects(out.build_dir)}
    rel = [t.relative_to(root).as_posix() for t in tars[:2]]
    assert by_id[rel[0]] == "corrupt_archive" and by_id[rel[1]] == "not_a_file"
    assert out.counts["written"] > 0
    assert out.counts["read"] == out.counts["written"] + out.counts["rejected"]


def test_a_symlinked_tar_pointing_outside_the_root_is_refused(dam, tmp_path):
    root = tmp_path / "raw"
    shutil.copytree(dam, root)
    tar_path = sorted(root.glob("*/images/*.tar"))[0]
    shutil.move(tar_path, tmp_path / "elsewhere.tar")
    os.symlink(tmp_path / "elsewhere.tar", tar_path)
    bad = _bad(DescribeAnythingReader(root=str(root), frame_records="first_frame").list_items())
    assert [b["reason"] for b in bad.values()] == ["unsafe_path"]


# --- RefCOCO: malformed refs ---------------------------------------------------------------

BAD_REFS = [
    "not a dict",
    {"ref_id": [1], "ann_id": 1, "image_id": 1, "split": "train"},
    {"ref_id": 900, "ann_id": {"a": 1}, "image_id": 2, "split": "train", "sentences": []},
    {"ref_id": 901, "ann_id": 1, "image_id": 3, "split": "train", "sentences": "a string"},
    {"ref_id": 902, "ann_id": 1, "image_id": 4, "split": "train", "sentences": [{"raw": 5}]},
    {"ref_id": 903, "ann_id": 1, "image_id": [4], "split": "train", "sentences": []},
    {"ref_id": "str-id", "ann_id": 1, "image_id": 77_777, "split": "train", "sentences": []},
]


def test_malformed_refs_reject_their_image_and_the_rest_is_built(synth, tmp_path):
    root = tmp_path / "raw"
    shutil.copytree(synth("refcoco", n_items=10, seed=5), root)
    with open(root / "refs(unc).p", "rb") as f:
        refs = pickle.load(f)
    with open(root / "refs(unc).p", "wb") as f:
        pickle.dump(refs + BAD_REFS, f, protocol=2)
    out = run_build(make_config(root, tmp_path / "out", fmt="refcoco"), runner="serial",
                    progress=False)
    by_id = {r["source_id"]: r for r in read_rejects(out.build_dir)}
    n = len(refs)
    for i in (n, n + 5):  # no usable image id: a reject of their own
        assert by_id[f"refs[{i}]"]["reason"] == "bad_annotation"
    for image_id in (1, 2, 3, 4):  # a bad ref rejects the image it names, with why
        assert by_id[f"{image_id:012d}"]["reason"] == "bad_annotation"
        assert "refs[" in by_id[f"{image_id:012d}"]["detail"]
    assert "not in instances.json" in by_id["000000077777"]["detail"]
    assert out.counts["written"] > 0
    assert out.counts["read"] == out.counts["written"] + out.counts["rejected"]


def test_refcoco_file_name_escaping_the_image_folder_is_refused(synth, tmp_path):
    root = tmp_path / "raw"
    shutil.copytree(synth("refcoco", n_items=6, seed=5), root)
    doc = json.loads((root / "instances.json").read_text())
    doc["images"][0]["file_name"] = "../instances.json"
    (root / "instances.json").write_text(json.dumps(doc))
    reader = RefCocoReader(root=str(root))
    item = next(i for i in reader.list_items() if i.data.get("image_id") == doc["images"][0]["id"])
    with pytest.raises(SampleError) as e:
        reader.load(item)
    assert e.value.reason is Reason.UNSAFE_PATH


# --- Osprey --------------------------------------------------------------------------------

def test_osprey_elements_of_the_wrong_shape_or_with_repeated_keys_are_rejects(synth, tmp_path):
    root = tmp_path / "raw"
    shutil.copytree(synth("osprey", n_items=5, seed=6), root)
    path = root / "Osprey-724K" / "osprey_conversation.json"
    doc = json.loads(path.read_text())
    good = json.dumps(doc[0])
    text = json.dumps(doc + [None, [1, 2], {"file_name": "../../etc/hostname", "height": 10,
                                             "width": 10, "annotation": []}])
    repeated = good.replace('"height":', '"height": 1, "height":', 1)
    path.write_text(text[:-1] + ", " + repeated + "]")
    reader = OspreyReader(root=str(root), files=("osprey_conversation",))
    items = reader.list_items()
    bad = _bad(items)
    n = len(doc)
    assert {k: v["reason"] for k, v in bad.items()} == {
        f"osprey_conversation_{i:07d}": "bad_annotation" for i in (n, n + 1, n + 3)}
    assert "repeats keys ['height']" in bad[f"osprey_conversation_{n + 3:07d}"]["detail"]
    escape = next(i for i in items if i.source_id == f"osprey_conversation_{n + 2:07d}")
    with pytest.raises(SampleError) as e:
        reader.load(escape)
    assert e.value.reason is Reason.UNSAFE_PATH


# --- SA-V ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sav(synth):
    return synth("sav", n_items=2, seed=7)


def _mp4(fps: int, *, audio_only: bool = False, size=(120, 160), frames: int = 12) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as c:
        if audio_only:
            s = c.add_stream("aac", rate=8000)
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                               layout="mono")
            frame.sample_rate = 8000
            for _ in range(4):
                c.mux(s.encode(frame))
            c.mux(s.encode())
            return buf.getvalue()
        s = c.add_stream("libx264", rate=fps)
        s.height, s.width, s.pix_fmt = *size, "yuv420p"
        for _ in range(frames):
            c.mux(s.encode(av.VideoFrame.from_ndarray(np.zeros((*size, 3), np.uint8),
                                                      format="rgb24")))
        c.mux(s.encode())
    return buf.getvalue()


def _sav_copy(sav: Path, tmp_path: Path) -> tuple[Path, SavReader, dict]:
    root = tmp_path / "raw"
    shutil.copytree(sav, root)
    reader = SavReader(root=str(root))
    return root, reader, {i.source_id: i for i in reader.list_items()}


@pytest.mark.parametrize("case, reason", [("fps30", "corrupt_video"),
                                          ("audio_only", "corrupt_video"),
                                          ("fifo", "not_a_file"),
                                          ("escape", "unsafe_path")])
def test_videos_that_are_not_what_they_claim_get_their_reason(sav, tmp_path, case, reason):
    root, reader, items = _sav_copy(sav, tmp_path)
    video = root / "sav_000001.mp4"
    video.unlink()
    if case == "fps30":
        video.write_bytes(_mp4(30))
    elif case == "audio_only":
        video.write_bytes(_mp4(24, audio_only=True))
    elif case == "fifo":
        os.mkfifo(video)
    else:
        (tmp_path / "outside.mp4").write_bytes(_mp4(24))
        os.symlink(tmp_path / "outside.mp4", video)
    with pytest.raises(SampleError) as e:
        reader.load(items["sav_000001"])
    assert e.value.reason.value == reason
    fps = reader.load(items["sav_000002"]).meta["fps"]
    assert json.dumps(fps) == "24"  # the real rate, an int when whole (bytes as before)


def test_frames_over_the_pixel_budget_are_refused_before_any_decode(sav, tmp_path, monkeypatch):
    _, reader, items = _sav_copy(sav, tmp_path)
    small = SavReader(root=reader.root, max_pixels=100)

    def no_decode(*_a, **_k):
        raise AssertionError("a frame was decoded before the pixel budget was checked")

    monkeypatch.setattr(av.container.InputContainer, "decode", no_decode)
    with pytest.raises(SampleError) as e:
        small.load(items["sav_000001"])
    assert e.value.reason is Reason.IMAGE_TOO_LARGE


def test_the_build_passes_image_max_pixels_to_the_video_reader(sav, tmp_path):
    out = run_build(make_config(sav, tmp_path / "out", fmt="sav", image={"max_pixels": 100}),
                    runner="serial", progress=False)
    reasons = {r["reason"] for r in read_rejects(out.build_dir)}
    assert reasons == {"image_too_large"} and out.counts["written"] == 0


@pytest.mark.parametrize("entry", [[1, 2], {"objects": [1]}, {"objects": {"0": "text"}},
                                   {"objects": {"0": {"formated": 5}}},
                                   {"objects": {"0": {"short_caps": "not a list"}}}])
def test_a_wrong_typed_expression_entry_rejects_only_its_video(sav, tmp_path, entry):
    root = tmp_path / "raw"
    shutil.copytree(sav, root)
    path = root / "sam_v_final_v3.json"
    doc = json.loads(path.read_text())
    doc["sav_000001"] = entry
    path.write_text(json.dumps(doc))
    items = SavReader(root=str(root), expressions="sam_v_final_v3.json").list_items()
    bad = _bad(items)
    assert list(bad) == ["sav_000001"] and bad["sav_000001"]["reason"] == "bad_annotation"
    assert any(i.source_id == "sav_000002" and BAD_ITEM not in i.data for i in items)


def test_refcoco_records_with_repeated_keys_reject_their_image(synth, tmp_path):
    root = tmp_path / "raw"
    shutil.copytree(synth("refcoco", n_items=6, seed=5), root)
    text = (root / "instances.json").read_text()
    # the first annotation repeats its category: json keeps the last, silently
    (root / "instances.json").write_text(
        text.replace('"category_id":', '"category_id": 1, "category_id":', 1))
    doc = json.loads(text)
    image_id = doc["annotations"][0]["image_id"]
    items = RefCocoReader(root=str(root)).list_items()
    bad = _bad(items)
    assert "repeat keys ['category_id']" in bad[f"{image_id:012d}"]["detail"]
    assert len(items) - len(bad) > 0


@pytest.mark.parametrize("texts", [{"conversations": "hi"}, {"conversations": [{"from": 1}]},
                                   {"conversations": [["human", "hi"]]},
                                   {"description": [1, 2]}, {"description": "one string"}])
def test_osprey_text_of_the_wrong_type_is_a_reject_not_passed_through(synth, texts, tmp_path):
    root = tmp_path / "raw"
    shutil.copytree(synth("osprey", n_items=5, seed=6), root)
    path = root / "Osprey-724K" / "osprey_conversation.json"
    doc = json.loads(path.read_text())
    doc[0] = {**doc[0], **texts}
    path.write_text(json.dumps(doc))
    reader = OspreyReader(root=str(root), files=("osprey_conversation",))
    first = reader.list_items()[0]
    with pytest.raises(SampleError) as e:
        reader.load(first)
    assert e.value.reason is Reason.BAD_ANNOTATION


@pytest.mark.parametrize("caption", [5, ["a"], {"text": "a"}, b"bytes"])
def test_a_dam_caption_of_the_wrong_type_is_a_reject(caption):
    from sa2va_shards.readers.describe_anything import _regions

    with pytest.raises(SampleError) as e:
        _regions([{"caption": caption, "mask_rle": {}}], "x.tar:k.pickle")
    assert e.value.reason is Reason.BAD_ANNOTATION
    assert _regions([{"mask_rle": {}}], "x") == [{"mask_rle": {}}]  # no caption: kept


def test_a_clip_with_more_than_256_masks_is_built(tmp_path):
    """8 frames x 40 masklets = 320 masks in one sample: past pycocotools' uint8 area count,
    which made every such clip an `unexpected_error`."""
    from sa2va_shards.synth.sav import write_clip

    root = tmp_path / "raw"
    write_clip(root, "sav_000001", np.random.default_rng(0), n_frames=32, n_obj=40,
               size=(240, 320))
    out = run_build(make_config(root, tmp_path / "out", fmt="sav"), runner="serial",
                    progress=False)
    assert out.counts["written"] == 1, read_rejects(out.build_dir)
    sample = json.loads((out.build_dir / "dataset.json").read_text())["counts"]
    assert sample["objects_written"] + sample["objects_dropped"] == 40
