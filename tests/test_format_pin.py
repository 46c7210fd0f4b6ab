"""Same schema, same bytes: a fixed synthetic build's members are pinned by hash.

A change that alters any stored byte (a kernel, a reader, the JSON layout) must bump
`format.SCHEMA_VERSION`; this test fails otherwise. JPEG bytes also depend on the codec, so
they are compared only under the codec the pin was recorded with.

Regenerate after a deliberate schema bump: `python -m tests.test_format_pin --write`.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

from sa2va_shards.build import run_build
from sa2va_shards.build.provenance import code_fingerprint
from sa2va_shards.config import parse_config
from sa2va_shards.format import SCHEMA_VERSION, image_members, iter_samples
from sa2va_shards.synth import synth_dataset

PIN = Path(__file__).parent / "data" / "format_pin.json"
SETS = (("coco", 8, ("bad_rle", "empty_mask")), ("osprey", 4, ()), ("refcoco", 4, ()))


def _codec() -> dict:
    libs = code_fingerprint()["libraries"]
    return {"pillow": libs["pillow"], "libjpeg": libs["libjpeg"]}


def _member_hashes(out: Path) -> dict[str, str]:
    hashes = {}
    for fmt, n, faults in SETS:
        raw = synth_dataset(fmt, out / "raw" / fmt, n_items=n, seed=7, faults=faults)
        cfg = parse_config({"dataset": f"pin_{fmt}", "out": str(out / "shards"),
                            "reader": {"format": fmt, "root": str(raw)},
                            "shards": {"samples_per_shard": 4}})
        build = run_build(cfg, runner="serial", progress=False).build_dir
        for tar in sorted((build / "shards").glob("*.tar")):
            for key, members in iter_samples(tar):
                for name, data in members.items():
                    # by sample, not shard: which samples share a tar is the plan's rule
                    hashes[f"{fmt}/{key}.{name}"] = hashlib.sha256(data).hexdigest()
    return hashes


def _is_image(path: str) -> bool:
    member = path.rsplit("/", 1)[1].split(".", 1)[1]
    return bool(image_members([member]))


def test_an_unchanged_schema_writes_the_same_bytes(tmp_path):
    pin = json.loads(PIN.read_text())
    assert pin["schema_version"] == SCHEMA_VERSION, (
        "SCHEMA_VERSION changed: regenerate the pin (python -m tests.test_format_pin --write)")
    now = _member_hashes(tmp_path)
    assert set(now) == set(pin["members"]), "other samples or members than pinned"
    same_codec = pin["codec"] == _codec()
    changed = sorted(k for k, v in now.items() if v != pin["members"][k]
                     and (same_codec or not _is_image(k)))
    assert not changed, (f"{len(changed)} stored members changed under schema {SCHEMA_VERSION} "
                         f"(e.g. {changed[:3]}): bump format.SCHEMA_VERSION")
    assert any(k.endswith(".jpg") for k in now)  # the images are there (compared if same codec)


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    with tempfile.TemporaryDirectory() as d:
        PIN.write_text(json.dumps({"schema_version": SCHEMA_VERSION, "codec": _codec(),
                                   "members": _member_hashes(Path(d))}, indent=1,
                                  sort_keys=True) + "\n")
    print(f"wrote {PIN}")
