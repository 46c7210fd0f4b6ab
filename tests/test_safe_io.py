"""Paths from the data never leave the dataset folder; only regular files are opened; repeated
JSON keys are seen (issue 10, classes 2, 3, 5). Property tests over generated paths."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sa2va_shards.errors import Reason, SampleError
from sa2va_shards.safe_io import (
    NotRegularFileError,
    data_path,
    duplicate_keys,
    load_json,
    open_regular,
    read_data_file,
)

SECRET = b"outside the root"


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """root/base/{a/x.jpg, in -> a, out -> ../.., out_file -> /secret, x.jpg, fifo}."""
    top = tmp_path_factory.mktemp("paths")
    (top / "secret.jpg").write_bytes(SECRET)
    base = top / "root" / "base"
    (base / "a").mkdir(parents=True)
    (base / "a" / "x.jpg").write_bytes(b"inside")
    (base / "x.jpg").write_bytes(b"inside")
    os.symlink(base / "a", base / "in")
    os.symlink(top, base / "out")
    os.symlink(top / "secret.jpg", base / "out_file")
    os.mkfifo(base / "fifo")
    return base


segments = st.sampled_from(["..", ".", "a", "x.jpg", "in", "out", "out_file", "secret.jpg",
                            "root", "base", "", "fifo", "a\0b"])


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(segments, min_size=1, max_size=6), absolute=st.booleans())
def test_no_generated_path_reads_outside_the_folder(tree, parts, absolute):
    rel = ("/" if absolute else "") + "/".join(parts)
    try:
        path = data_path(tree, rel)
    except SampleError as e:
        assert e.reason in (Reason.UNSAFE_PATH, Reason.BAD_ANNOTATION)
        return
    assert path.resolve().is_relative_to(tree.resolve())
    try:
        data = read_data_file(tree, rel, shown=rel)
    except SampleError as e:
        assert e.reason in (Reason.MISSING_IMAGE, Reason.NOT_A_FILE)
        return
    assert data == b"inside"


def test_symlinks_inside_the_folder_are_followed_and_outside_refused(tree):
    assert read_data_file(tree, "in/x.jpg", shown="in/x.jpg") == b"inside"
    for rel in ("out/secret.jpg", "out_file", "../../secret.jpg", str(tree.parent.parent /
                                                                         "secret.jpg")):
        with pytest.raises(SampleError) as e:
            read_data_file(tree, rel, shown=rel)
        assert e.value.reason is Reason.UNSAFE_PATH, rel


def test_a_fifo_is_refused_without_blocking(tree):
    old = signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError()))
    signal.alarm(20)
    try:
        with pytest.raises(NotRegularFileError):
            open_regular(tree / "fifo")
        with pytest.raises(SampleError) as e:
            read_data_file(tree, "fifo", shown="fifo")
        assert e.value.reason is Reason.NOT_A_FILE
        with pytest.raises(SampleError) as e:
            read_data_file(tree, "a", shown="a")  # a folder
        assert e.value.reason is Reason.NOT_A_FILE
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@given(keys=st.lists(st.sampled_from("abcde"), min_size=1, max_size=8),
       depth=st.integers(0, 3))
def test_repeated_json_keys_are_found_at_any_depth(keys, depth):
    obj = "{" + ", ".join(f'"{k}": {i}' for i, k in enumerate(keys)) + "}"
    for _ in range(depth):
        obj = '{"x": [' + obj + "]}"
    doc, found = load_json(obj)
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    assert found == bool(repeated)
    assert list(duplicate_keys(doc)) == repeated


def test_a_path_object_is_not_text(tree):
    with pytest.raises(SampleError) as e:
        data_path(tree, Path("x.jpg"))
    assert e.value.reason is Reason.BAD_ANNOTATION


@pytest.mark.parametrize("name", ["\ud800", "a/\udcff.jpg"])
def test_a_file_name_that_is_not_valid_text_is_a_reject(tree, name):
    # found by the COCO index fuzz test: a lone surrogate crashed the path resolution
    with pytest.raises(SampleError) as e:
        data_path(tree / "root", name)
    assert e.value.reason == Reason.BAD_ANNOTATION
