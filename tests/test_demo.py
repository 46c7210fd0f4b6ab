"""The demo end to end (serial runner: the Ray path is covered by the e2e tests)."""

from __future__ import annotations

import re

from PIL import Image

from sa2va_shards.cli import main
from sa2va_shards.readers import READERS


def test_demo_builds_verifies_and_renders_every_format(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--scale", "0.25", "--serial"]) == 0
    out = capsys.readouterr().out
    for fmt in READERS:
        assert f"== {fmt}: " in out and (tmp_path / "raw" / fmt).is_dir()
    assert out.count("verify: OK") == len(READERS)
    for read, written, rejected in re.findall(r"read (\d+) = written (\d+) \+ rejected (\d+)",
                                              out):
        assert int(read) == int(written) + int(rejected) and int(rejected) > 0
    for png in ("overlay.png", "stats.png"):
        with Image.open(tmp_path / png) as im:
            assert im.width > 600
