"""The `image.store` policy (pure): keep the source file's bytes, or store the S x S squash.

Only JPEG sources are kept: the member is `<key>.jpg`, and stock readers (webdataset's
decoders, `Image.open`) must find a JPEG there. A kept source is never decoded and
re-encoded, so it holds exactly the detail of the source; the loader makes the S x S SAM2 input,
the 448 thumbnail and the tiles from it, one resample each, as Sa2VA does from the file.
"""

from __future__ import annotations

__all__ = ["STORE_ORIGINAL", "STORE_RESIZED", "is_jpeg", "keep_source"]

STORE_ORIGINAL = "original"
STORE_RESIZED = "resized"

#: SOI followed by the first marker's 0xFF: what libjpeg (and Pillow's JPEG plugin) accept as
#: the start of a JPEG; MPO files (camera JPEGs with a second picture) start the same way and
#: decode as their first picture everywhere.
_JPEG_MAGIC = b"\xff\xd8\xff"


def is_jpeg(data: bytes) -> bool:
    """Whether `data` is a JPEG stream by its magic bytes (decodability is checked apart)."""
    return data[:3] == _JPEG_MAGIC


def keep_source(data: bytes, height: int, width: int, *, store: str, size: int) -> bool:
    """Whether a decoded-and-checked source image is stored as it is under policy `store`.

    `resized`: never. `original`: every JPEG (other formats are resized: their bytes cannot be
    a `.jpg` member). `auto`: a JPEG no larger than the target on either side (a larger one
    costs more bytes and loader decode time than its S x S squash, and holds detail only
    tiles could use, which `image.tiles` stores at the tile grid's size).
    """
    if store == STORE_RESIZED or not is_jpeg(data):
        return False
    if store == STORE_ORIGINAL:
        return True
    if store == "auto":
        return height <= size and width <= size
    raise ValueError(f"image.store must be resized, original or auto, got {store!r}")
