"""Describe Anything (DLC-SFT, `nvidia/describe-anything-dataset`), local extracted layout.

On disk: `<root>/<SPLIT>/images/*.tar` WebDataset shards (SPLIT: COCOStuff, LVIS, Mapillary,
OpenImages, PACO, SAV, ...) holding `{id}.jpg` + `{id}.pickle`. The SA-V-based split stores
video records, frames `{id}.{t}.jpg`: which frame a record's masks annotate is not verified
against real files, so such records are `unsupported_layout` rejects by default
(`frame_records: first_frame` reads them as the first frame, a guess to check on one real
record first). A split's `annotations.json` is not read: the tars' pickles are the source.
The pickle holds one region dict or a list of them, each with
`caption` (str) and `mask_rle` (COCO compressed RLE `{size: [H, W], counts}`); it is read with
the restricted unpickler, so a pickle that names any class or function is an `unsafe_pickle`
reject and is never executed.

One sample = one image with all its regions (the third-party Sa2VA forks use one region per
sample; the loader can sample). The light index reads only tar headers (member names, offsets,
sizes); `load` reads the two members by offset, without parsing the tar again. A root on an
object store is therefore staged whole at the driver (every tar is an index file).

Source id: `<SPLIT>_<id>` (the WebDataset key: the member path up to the first dot).
"""

from __future__ import annotations

import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, Literal

from sa2va_shards import ops
from sa2va_shards.errors import ConfigError, Reason, SampleError
from sa2va_shards.readers._safe_pickle import safe_loads
from sa2va_shards.readers.base import BaseReader
from sa2va_shards.records import ItemRef, RawSample, bad_item
from sa2va_shards.safe_io import NotRegularFileError, data_path, open_regular

__all__ = ["DescribeAnythingReader"]

#: image member suffixes: `jpg` or a frame `<t>.jpg` (SAV split); first match in sort order.
_IMAGE_EXT = re.compile(r"^(?:(\d+)\.)?(jpg|jpeg|png)$")
_PICKLE_EXTS = ("pickle", "pkl")
#: region fields copied into the object record (besides the caption); plain scalars only.
_SCALARS = (str, int, float, bool, type(None))


def _split_member(name: str) -> tuple[str, str]:
    """WebDataset key and suffix: `dir/abc.0.jpg` -> ('dir/abc', '0.jpg')."""
    head, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), ext


def _image_rank(ext: str) -> tuple[int, str] | None:
    m = _IMAGE_EXT.match(ext.lower())
    return None if m is None else (int(m.group(1) or -1), ext)


def _add_member(groups: dict[str, dict], m: tarfile.TarInfo) -> None:
    key, ext = _split_member(m.name)
    entry = {"name": m.name, "offset": m.offset_data, "size": m.size}
    g = groups.setdefault(key, {})
    rank = _image_rank(ext)
    if rank is not None and (g.get("_rank") is None or rank < g["_rank"]):
        g.update(image=entry, _rank=rank)
    elif ext.lower() in _PICKLE_EXTS:
        g["pickle"] = entry


def _damaged(f: BinaryIO, gaps: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The gaps between members that hold anything but zeros (end-of-archive padding is
    zeros): a header there failed its checksum, so its member was skipped."""
    bad = []
    for start, end in gaps:
        f.seek(start)
        left = end - start
        while left > 0:
            chunk = f.read(min(left, 1 << 20))
            if not chunk:
                break
            if chunk.count(0) != len(chunk):
                bad.append((start, end))
                break
            left -= len(chunk)
    return bad


def _index_tar(path: Path, rel: str) -> tuple[dict[str, dict], list[tuple[int, int]]]:
    """key -> {image: member, pickle: member} from the tar headers only, and the byte ranges
    whose headers are damaged.

    tarfile stops at the first header that fails its checksum as if the archive ended there,
    which would silently drop every later record. `ignore_zeros` makes it step over such a
    header block by block instead; the bytes it stepped over are checked to be padding, so a
    damaged member is reported (`corrupt_archive`) and the records after it are kept.

    Raises:
        OSError, tarfile.TarError: the tar cannot be read at all.
    """
    groups: dict[str, dict] = {}
    gaps: list[tuple[int, int]] = []
    with open_regular(path) as f:
        size, expected = os.fstat(f.fileno()).st_size, 0
        with tarfile.open(fileobj=f, mode="r:", ignore_zeros=True) as tar:
            for m in tar:  # uncompressed only: load seeks by offset
                if m.offset != expected:
                    gaps.append((expected, m.offset))
                expected = m.offset_data + -(-m.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
                if m.isfile():
                    _add_member(groups, m)
        gaps += [(expected, size)] if expected < size else []
        damaged = _damaged(f, gaps)
    return {k: {n: v for n, v in g.items() if n != "_rank"} for k, g in groups.items()}, damaged


def _tar_items(split: str, tar: Path, rel: str) -> list[ItemRef]:
    """The tar's records, plus a `corrupt_archive` reject for the whole tar when it cannot be
    read and one per damaged byte range (the other tars are built either way)."""
    try:
        members, damaged = _index_tar(tar, rel)
    except NotRegularFileError as e:
        return [bad_item(rel, Reason.NOT_A_FILE, f"{rel}: {str(e).rpartition(': ')[2]}")]
    except (tarfile.TarError, OSError) as e:
        return [bad_item(rel, Reason.CORRUPT_ARCHIVE, f"{rel}: cannot read tar headers: "
                                                      f"{type(e).__name__}: {e}")]
    if not members and damaged:
        return [bad_item(rel, Reason.CORRUPT_ARCHIVE, f"{rel}: no valid tar header (not a tar)")]
    items = [bad_item(f"{rel}@{start}", Reason.CORRUPT_ARCHIVE,
                      f"{rel}: bytes {start}..{end} are not valid tar headers (a damaged "
                      "member: the records around it are kept)") for start, end in damaged]
    return items + [ItemRef(source_id=f"{split}_{key}",
                            data={"split": split, "tar": rel, "id": key, **entries})
                    for key, entries in members.items()]


@dataclass(frozen=True, kw_only=True)
class DescribeAnythingReader(BaseReader):
    """Reads `<root>/<SPLIT>/images/*.tar` for each split (root holds one folder per split)."""

    name: ClassVar[str] = "describe_anything"
    #: splits to read; empty means every folder under root that has `images/*.tar`.
    splits: tuple[str, ...] = ()
    #: per-frame video records (`{id}.{t}.jpg`): `reject` (default) or `first_frame`.
    frame_records: Literal["reject", "first_frame"] = "reject"

    def __post_init__(self) -> None:
        splits = (self.splits,) if isinstance(self.splits, str) else self.splits
        if not isinstance(splits, list | tuple) or not all(isinstance(s, str) for s in splits):
            raise ConfigError(f"reader.options.splits: expected a list of names, got {splits!r}")
        object.__setattr__(self, "splits", tuple(splits))
        if self.frame_records not in ("reject", "first_frame"):
            raise ConfigError(f"reader.options.frame_records {self.frame_records!r}: "
                              "expected 'reject' or 'first_frame'")

    def _split_names(self) -> list[str]:
        root = Path(self.root)
        if self.splits:
            return list(self.splits)
        found = sorted(p.parent.parent.name for p in root.glob("*/images/*.tar"))
        if not found:
            raise ConfigError(f"{root}: no <SPLIT>/images/*.tar found (check reader.root)")
        return sorted(set(found))

    def _tars(self, split: str) -> list[Path]:
        folder = self.path(split) / "images"
        tars = sorted(folder.glob("*.tar"))
        if not tars:
            raise ConfigError(f"{folder}: no .tar shards for split {split!r} (check "
                              "reader.root and reader.options.splits)")
        return tars

    def index_files(self) -> list[str]:
        """Every tar of the selected splits: `list_items` reads each one's headers, so a root
        on an object store is staged whole at the driver (the tars are the dataset)."""
        return [tar.relative_to(self.root).as_posix()
                for split in self._split_names() for tar in self._tars(split)]

    def list_items(self) -> list[ItemRef]:
        """One `ItemRef` per WebDataset key: tar path and the image / pickle members' offsets
        and sizes (tar headers only; no image or pickle is read)."""
        items = []
        for split in self._split_names():
            for tar in self._tars(split):
                rel = tar.relative_to(self.root).as_posix()
                try:  # a symlinked tar may only point inside root
                    data_path(self.root, rel, name="tar")
                except SampleError as e:
                    items.append(bad_item(rel, e.reason, e.detail))
                    continue
                items += [self._frame_record_check(i) for i in _tar_items(split, tar, rel)]
        return sorted(items, key=lambda r: r.source_id)

    def _frame_record_check(self, item: ItemRef) -> ItemRef:
        """A per-frame video record becomes an `unsupported_layout` reject unless
        `frame_records: first_frame`."""
        name = (item.data.get("image") or {}).get("name", "")
        rank = _image_rank(_split_member(name)[1]) if name else None
        if self.frame_records == "first_frame" or rank is None or rank[0] < 0:
            return item
        return bad_item(item.source_id, Reason.UNSUPPORTED_LAYOUT,
                        f"{item.data['tar']}:{name}: a per-frame video record; which frame "
                        "its masks annotate is unverified (frame_records: first_frame reads "
                        "it as the first frame)")

    def _read_member(self, ref: ItemRef, which: str) -> bytes:
        entry, tar = ref.data.get(which), ref.data["tar"]
        if entry is None:
            reason = Reason.MISSING_IMAGE if which == "image" else Reason.BAD_ANNOTATION
            raise SampleError(reason, f"{tar}: key {ref.data['id']!r} has no {which} member")
        try:
            with open_regular(self.path(tar)) as f:
                f.seek(entry["offset"])
                data = f.read(entry["size"])
        except OSError as e:
            raise SampleError(Reason.MISSING_IMAGE, f"{tar}: {type(e).__name__}: {e}") from e
        if len(data) != entry["size"]:  # the tar changed or was cut after indexing
            raise SampleError(Reason.CORRUPT_IMAGE if which == "image" else Reason.BAD_ANNOTATION,
                              f"{tar}:{entry['name']}: truncated ({len(data)} of {entry['size']} "
                              "bytes)")
        return data

    def item_files(self, ref: ItemRef) -> list[str]:
        """The files `load` reads, relative to root: a shard is reused by an incremental build
        only while they are unchanged (`build/store.py`)."""
        tar = ref.data.get("tar")
        return [tar] if isinstance(tar, str) else []

    def load(self, ref: ItemRef) -> RawSample:
        """Read the image and the region pickle; masks stay the RLEs the pickle holds.

        Raises:
            SampleError: `unsafe_pickle`, `bad_annotation` (corrupt pickle, unexpected
                structure, missing pickle member), `missing_image`, `bad_segmentation`,
                `mask_size_mismatch` (regions of different sizes).
        """
        where = f"{ref.data['tar']}:{(ref.data.get('pickle') or {}).get('name', ref.data['id'])}"
        regions = _regions(safe_loads(self._read_member(ref, "pickle"), name=where), where)
        image = self._read_member(ref, "image")
        segs = [r["mask_rle"] for r in regions]
        h, w = _rle_size(segs[0], where) if segs else (0, 0)
        rles = ops.segmentations_to_rles(segs, height=h, width=w)
        return RawSample(
            source_id=ref.source_id, image=image,
            image_name=f"{ref.data['tar']}:{ref.data['image']['name']}", rles=tuple(rles),
            objects=tuple(_object(i, r) for i, r in enumerate(regions)),
            meta={"split": ref.data["split"], "tar": ref.data["tar"], "id": ref.data["id"]},
        )


def _regions(obj: Any, where: str) -> list[dict]:
    """The region dicts of one record: a dict with `mask_rle`, or a list of them."""
    regions = [obj] if isinstance(obj, dict) else obj
    if not isinstance(regions, list) or not all(
            isinstance(r, dict) and "mask_rle" in r for r in regions):
        raise SampleError(Reason.BAD_ANNOTATION,
                          f"{where}: expected a region dict or a list of region dicts with "
                          f"'mask_rle', got {type(obj).__name__}")
    for i, r in enumerate(regions):  # a caption of the wrong type is never dropped silently
        if not isinstance(r.get("caption"), str | None):
            raise SampleError(Reason.BAD_ANNOTATION, f"{where}: region {i} caption is "
                                                     f"{type(r['caption']).__name__}, not text")
    return regions


def _rle_size(seg: Any, where: str) -> tuple[int, int]:
    try:
        h, w = (ops.strict_dim(v) for v in seg["size"])
    except (KeyError, TypeError, ValueError) as e:
        raise SampleError(Reason.BAD_SEGMENTATION, f"{where}: mask_rle has no [H, W] size: "
                                                   f"{type(e).__name__}: {e}",
                          stage="decode") from e
    return h, w


def _object(i: int, region: dict) -> dict:
    """Object record: region number, caption, and the region's other plain scalar fields."""
    extra = {k: v for k, v in region.items()
             if k not in ("mask_rle", "id") and isinstance(k, str) and isinstance(v, _SCALARS)}
    caption = region.get("caption")
    return {**extra, "id": i + 1, "caption": caption if isinstance(caption, str) else None}


