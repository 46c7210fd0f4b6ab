"""The one atomic write: all or nothing, no temp left behind, no shared temp."""

from __future__ import annotations

import threading

import pytest

from sa2va_shards.atomic import atomic_path, atomic_write


def test_a_write_replaces_the_whole_file(tmp_path):
    path = tmp_path / "card.json"
    path.write_bytes(b"old")
    atomic_write(path, b"new content")
    assert path.read_bytes() == b"new content"
    assert [p.name for p in tmp_path.iterdir()] == ["card.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temp(tmp_path):
    path = tmp_path / "samples.parquet"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash mid-write")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["samples.parquet"]


def test_concurrent_writers_never_share_a_temp_file(tmp_path):
    path, barrier = tmp_path / "latest", threading.Barrier(8)
    temps = []

    def write(i: int) -> None:
        with atomic_path(path) as tmp:
            temps.append(tmp)
            barrier.wait()  # every writer holds its temp at once
            tmp.write_bytes(f"v{i}\n".encode() * 1000)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(temps)) == 8
    content = path.read_bytes()
    assert content in {f"v{i}\n".encode() * 1000 for i in range(8)}  # one writer's, whole
    assert [p.name for p in tmp_path.iterdir()] == ["latest"]
