"""`reader.options` are checked against the reader's own fields by the config's strict code:
key path, closest name, type; at parse time, so a build fails before it writes anything."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
import yaml

from sa2va_shards.cli import main
from sa2va_shards.config import parse_config
from sa2va_shards.errors import ConfigError
from sa2va_shards.readers import get_reader


def _config(fmt: str, **options):
    return parse_config({"dataset": "d", "reader": {"format": fmt, "root": "raw",
                                                    "options": options}})


@pytest.mark.parametrize("fmt,options,message", [
    ("sav", {"frame_strid": 2}, "reader.options.frame_strid: unknown key; did you mean "
                                "frame_stride?"),
    ("refcoco", {"splt": "val"}, "reader.options.splt: unknown key; did you mean split?"),
    ("osprey", {"image_dir": ["coco/val2017"]}, "reader.options.image_dir: unknown key; did "
                                                "you mean image_dirs?"),
    ("coco", {"zzz": 1}, "reader.options.zzz: unknown key; known keys: annotations, images"),
    ("sav", {"frame_stride": 2.5}, "reader.options.frame_stride: expected int, got 2.5"),
    ("mevis", {"max_frames": 2.5}, "reader.options.max_frames: expected int or None, got 2.5"),
    ("refcoco", {"lowercase": "yes"}, "reader.options.lowercase: expected bool, got 'yes'"),
    ("describe_anything", {"splits": ["LVIS", 3]},
     "reader.options.splits: expected a list of str, got ['LVIS', 3]"),
    ("describe_anything", {"frame_records": "middle"},
     "reader.options.frame_records: 'middle' is not one of reject, first_frame"),
    ("sav", {"layout": "mkv"}, "reader.options.layout: 'mkv' is not one of mp4, frames, png"),
    ("refytvos", {"root": "elsewhere"}, "reader.options.root: not a reader option; it is set "
                                        "by reader.root"),
    ("sav", {"max_pixels": 10}, "reader.options.max_pixels: not a reader option; it is set by "
                                "image.max_pixels"),
])
def test_a_bad_option_is_refused_at_parse_time_with_its_key_path(fmt, options, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        _config(fmt, **options)


def test_the_reader_checks_options_the_same_way_when_built_from_a_reader_config():
    """Workers build their reader from `cfg.reader`; options changed after parsing (as the
    tests and library callers do with `replace`) meet the same checks."""
    cfg = _config("sav")
    with pytest.raises(ConfigError, match="^reader.options.frame_stride: expected int, got 2.5$"):
        get_reader(replace(cfg.reader, options={"frame_stride": 2.5}))


def test_an_unknown_format_is_refused_at_parse_time_with_a_suggestion():
    with pytest.raises(ConfigError, match="reader.format: unknown reader format 'cocco'; did "
                                          "you mean coco"):
        _config("cocco")


def test_valid_options_reach_the_reader_as_its_fields():
    sav = get_reader(_config("sav", frame_stride=2, max_frames=None, layout="frames").reader)
    assert (sav.frame_stride, sav.max_frames, sav.layout) == (2, None, "frames")
    refcoco = get_reader(_config("refcoco", split="val", variant="umd", lowercase=True).reader)
    assert (refcoco.split, refcoco.variant, refcoco.lowercase) == ("val", "umd", True)
    mevis = get_reader(_config("mevis", max_frames=4).reader)
    assert mevis.max_frames == 4 and mevis.expressions == "meta_expressions.json"


def test_a_list_option_takes_a_yaml_list_or_one_item_alone():
    osprey = get_reader(_config("osprey", files=["osprey_short_form"],
                                image_dirs="coco/val2017").reader)
    assert osprey.files == ("osprey_short_form.json",)
    assert osprey.image_dirs == ("coco/val2017",)
    assert get_reader(_config("describe_anything", splits=[]).reader).splits == ()


def test_the_options_are_kept_in_the_config_as_written():
    """The card records `reader.options` as the YAML gave them; only the reader normalises."""
    cfg = _config("osprey", files=["osprey_short_form"])
    assert cfg.reader.options == {"files": ["osprey_short_form"]}


def test_build_with_a_misspelt_option_fails_before_writing_anything(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "dataset": "d", "out": str(tmp_path / "out"),
        "reader": {"format": "sav", "root": str(tmp_path), "options": {"frame_strid": 2}}}))
    assert main(["build", str(cfg)]) == 2
    assert "reader.options.frame_strid: unknown key; did you mean frame_stride?" in (
        capsys.readouterr().err)
    assert not (tmp_path / "out").exists()
