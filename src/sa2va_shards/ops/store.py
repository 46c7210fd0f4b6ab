"""The `image.store` policy: keep the source file's bytes, or store the S x S squash.

Only plain JPEG sources are kept (`plain_jpeg`): the member is `<key>.jpg`, and stock readers
(webdataset's decoders, `Image.open`, OpenCV, nvJPEG) must find a JPEG there that they decode to
the pixels the masks describe. A kept source is never decoded and
re-encoded, so it holds exactly the detail of the source; the loader makes the S x S SAM2 input,
the 448 thumbnail and the tiles from it, one resample each, as Sa2VA does from the file.
"""

from __future__ import annotations

import io

from PIL import Image

__all__ = ["STORE_ORIGINAL", "STORE_RESIZED", "is_jpeg", "keep_source", "plain_jpeg"]

STORE_ORIGINAL = "original"
STORE_RESIZED = "resized"

#: SOI followed by the first marker's 0xFF: what libjpeg (and Pillow's JPEG plugin) accept as
#: the start of a JPEG (MPO files start the same way; `plain_jpeg` leaves them out).
_JPEG_MAGIC = b"\xff\xd8\xff"


def is_jpeg(data: bytes) -> bool:
    """Whether `data` is a JPEG stream by its magic bytes (decodability is checked apart)."""
    return data[:3] == _JPEG_MAGIC


def plain_jpeg(data: bytes) -> bool:
    """A JPEG every reader decodes to the pixels the masks are annotated on: three-channel
    RGB (a gray JPEG decodes to a 2-D array in readers that do not convert, e.g. Ray Data's
    `read_webdataset`, which then cannot stack it with RGB samples; a CMYK / YCCK one converts
    differently in libjpeg, OpenCV and nvJPEG, and Sa2VA's Pillow conversion is the one that
    counts), without an EXIF orientation (a reader honouring it would turn the image against
    its masks; we never apply it). Reads the header only."""
    if not is_jpeg(data):
        return False
    try:
        with Image.open(io.BytesIO(data)) as img:
            return (img.format == "JPEG" and img.mode == "RGB"
                    and img.getexif().get(_ORIENTATION, 1) == 1)
    except (OSError, ValueError, SyntaxError):  # a header Pillow cannot parse: re-encode it
        return False


_ORIENTATION = 0x0112


def keep_source(data: bytes, height: int, width: int, *, store: str, size: int) -> bool:
    """Whether a decoded-and-checked source image is stored as it is under policy `store`.

    `resized`: never. `original`: every plain JPEG (`plain_jpeg`; anything else is resized:
    other formats cannot be a `.jpg` member, CMYK or EXIF-oriented ones would read
    differently elsewhere). `auto`: a plain JPEG no larger than the target on either side (a
    larger one costs more bytes and loader decode time than its S x S squash, and holds
    detail only tiles could use, which `image.tiles` stores at the tile grid's size).
    """
    if store not in (STORE_RESIZED, STORE_ORIGINAL, "auto"):
        raise ValueError(f"image.store must be resized, original or auto, got {store!r}")
    if store == STORE_RESIZED or not plain_jpeg(data):
        return False
    return store == STORE_ORIGINAL or height <= size and width <= size
