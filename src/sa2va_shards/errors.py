"""Reject reasons and the exceptions that carry them.

Readers and kernels raise `SampleError`; the one catch boundary (per sample, in `shard.py`)
turns it into a reject row. Reason values are the stable codes stored in rejects.parquet.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["BuildAborted", "ConfigError", "Level", "Reason", "SampleError", "SYSTEM_EXCEPTIONS"]


class Reason(str, Enum):
    """Why an input sample (or one object of it) was not written."""

    MISSING_IMAGE = "missing_image"
    CORRUPT_IMAGE = "corrupt_image"
    IMAGE_TOO_LARGE = "image_too_large"
    MASK_SIZE_MISMATCH = "mask_size_mismatch"
    BAD_SEGMENTATION = "bad_segmentation"
    BAD_ANNOTATION = "bad_annotation"
    UNSAFE_PICKLE = "unsafe_pickle"
    DUPLICATE_ID = "duplicate_id"
    NO_OBJECTS = "no_objects"
    EMPTY_MASK = "empty_mask"
    K_ZERO = "k_zero"
    CORRUPT_VIDEO = "corrupt_video"
    MISSING_VIDEO = "missing_video"
    ROTATED_VIDEO = "rotated_video"
    #: a path from the data (file_name, a symlink) that would leave the dataset's folder.
    UNSAFE_PATH = "unsafe_path"
    #: a FIFO, device or folder where a file should be (opening it could hang).
    NOT_A_FILE = "not_a_file"
    #: a tar that cannot be read, or whose damaged headers hide members.
    CORRUPT_ARCHIVE = "corrupt_archive"
    #: an annotation over its budget (a pickle that expands, a masklet too large).
    ANNOTATION_TOO_LARGE = "annotation_too_large"
    #: a dialogue element (Osprey) without one complete question/answer pair: nothing to train.
    NO_DIALOGUE = "no_dialogue"
    #: a record in a published layout the reader does not read as such (Describe-Anything's
    #: per-frame video records: which frame their masks annotate is unverified).
    UNSUPPORTED_LAYOUT = "unsupported_layout"
    #: an input the dataset's own loader leaves out by rule (Flickr GCG: a caption under 3
    #: words, an image side under 32 pixels): recorded, never built.
    SOURCE_FILTER = "source_filter"
    UNEXPECTED = "unexpected_error"


class Level(str, Enum):
    """A reject row is about a whole input sample or about one object inside a written sample."""

    SAMPLE = "sample"
    OBJECT = "object"


class SampleError(Exception):
    """A per-input problem: the sample is rejected with `reason`, the build goes on."""

    def __init__(self, reason: Reason, detail: str, *, stage: str = "read") -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
        self.stage = stage

    def __reduce__(self):  # keep the keyword-only stage across pickling (Ray)
        return (_make_sample_error, (self.reason, self.detail, self.stage))


def _make_sample_error(reason: Reason, detail: str, stage: str) -> SampleError:
    return SampleError(reason, detail, stage=stage)


class ConfigError(ValueError):
    """The whole build cannot proceed (bad config, missing annotation file, wrong root)."""


class BuildAborted(RuntimeError):
    """A shard job gave up: so many samples in a row failed that the cause is the setup (wrong
    root folder, broken code), not the data. Nothing is committed; fix and rerun (resumes)."""


#: Never turned into reject rows: they mean broken code or a broken machine, not bad data.
SYSTEM_EXCEPTIONS: tuple[type[BaseException], ...] = (
    MemoryError,
    ImportError,
    NameError,
    SyntaxError,
    SystemError,
    KeyboardInterrupt,
)
