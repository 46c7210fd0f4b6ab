"""Reasons, the exceptions that carry them, and the one error boundary.

Readers, kernels and the loader's decoders raise `SampleError`. One kind of catch boundary,
`ErrorBoundary`, runs each item (a raw input in a shard job, a stored sample in a loader
worker): a data error becomes a record (a reject row, a skipped-sample count) and the run goes
on; system exceptions propagate; too many failures in a row (`Tolerance`) stop the run, since
that is a wrong setup or a bug, not bad data. Reason values are the stable codes stored in
rejects.parquet and the loader's stats.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum

__all__ = [
    "SYSTEM_EXCEPTIONS",
    "BuildAborted",
    "ConfigError",
    "CorruptDataError",
    "ErrorBoundary",
    "ErrorLimit",
    "Level",
    "Outcome",
    "Reason",
    "SampleError",
    "Tolerance",
]


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
    """One item cannot be used: in a build, a raw input (rejected with `reason`); in the
    loader, a stored sample (skipped and counted under `reason`). The run goes on.

    `corrupt=False` marks an intact item that is not served under a policy (every object
    K = 0 with `k_zero='drop'`, a conversation over `max_length`): counted, never an error
    under `strict`, and not a failure in a row.
    """

    def __init__(self, reason: Reason | str, detail: str, *, stage: str = "read",
                 corrupt: bool = True) -> None:
        super().__init__(f"{_code(reason)}: {detail}")
        self.reason = reason
        self.detail = detail
        self.stage = stage
        self.corrupt = corrupt

    @property
    def code(self) -> str:
        """The reason's stable code."""
        return _code(self.reason)

    def __reduce__(self):  # keep the keyword-only fields across pickling (Ray)
        return (_make_sample_error, (self.reason, self.detail, self.stage, self.corrupt))


def _code(reason: Reason | str) -> str:
    return reason.value if isinstance(reason, Reason) else reason


def _make_sample_error(reason: Reason | str, detail: str, stage: str,
                       corrupt: bool = True) -> SampleError:
    return SampleError(reason, detail, stage=stage, corrupt=corrupt)


class ConfigError(ValueError):
    """The whole build cannot proceed (bad config, missing annotation file, wrong root)."""


class ErrorLimit(RuntimeError):
    """An `ErrorBoundary`'s tolerance ran out."""


class BuildAborted(ErrorLimit):
    """A shard job gave up: so many samples in a row failed that the cause is the setup (wrong
    root folder, broken code), not the data. Nothing is committed; fix and rerun (resumes)."""


class CorruptDataError(ErrorLimit):
    """The loader met more corrupt samples or shards than its tolerance (`strict`: one)."""


#: Never turned into reject rows: they mean broken code or a broken machine, not bad data.
SYSTEM_EXCEPTIONS: tuple[type[BaseException], ...] = (
    MemoryError,
    ImportError,
    NameError,
    SyntaxError,
    SystemError,
    KeyboardInterrupt,
)


@dataclass(frozen=True)
class Tolerance:
    """How many failures in a row a run accepts before it stops (None: any number)."""

    #: failed items in a row, any reason (intact items skipped by policy do not count).
    max_consecutive: int | None = None
    #: items in a row that failed with something other than a `SampleError` (a bug).
    max_consecutive_unexpected: int | None = None


@dataclass
class Outcome:
    """What `ErrorBoundary.item` saw: the item's error, None when it went through."""

    error: SampleError | None = None


class ErrorBoundary:
    """The one per-item catch boundary, used by the build's shard job and the loader.

    ```
    with boundary.item(name) as outcome:
        ...                     # a data error here is caught, as `outcome.error`
    ```
    Any non-system exception becomes a `SampleError` (reason `unexpected_error`, stage
    `unknown`, when it is not one already); the `Tolerance` raises `raises` once too many
    items in a row failed.
    """

    def __init__(self, where: str, tolerance: Tolerance, *,
                 raises: type[ErrorLimit] = BuildAborted, hint: str = "") -> None:
        self.where, self.tolerance, self.raises, self.hint = where, tolerance, raises, hint
        self.failed_run = self.unexpected_run = 0

    @contextlib.contextmanager
    def item(self, name: str) -> Iterator[Outcome]:
        outcome = Outcome()
        try:
            yield outcome
        except (*SYSTEM_EXCEPTIONS, ErrorLimit):
            raise
        except Exception as e:  # noqa: BLE001 - the per-item boundary, see the class doc
            outcome.error = e if isinstance(e, SampleError) else SampleError(
                Reason.UNEXPECTED, f"{type(e).__name__}: {e}", stage="unknown")
            self._failed(name, outcome.error, unexpected=not isinstance(e, SampleError), cause=e)
        else:
            self.failed_run = self.unexpected_run = 0

    def _failed(self, name: str, err: SampleError, *, unexpected: bool,
                cause: Exception) -> None:
        if not err.corrupt:  # intact, skipped by policy: the data reads fine
            self.failed_run = self.unexpected_run = 0
            return
        self.failed_run += 1
        self.unexpected_run = self.unexpected_run + 1 if unexpected else 0
        limit = self.tolerance
        if limit.max_consecutive == 1:  # strict: the error itself, nothing to count
            raise self.raises(f"{err.code}: {name}: {err.detail}") from cause
        last = f"last: {name}: {err}"
        if (limit.max_consecutive_unexpected is not None
                and self.unexpected_run >= limit.max_consecutive_unexpected):
            raise self.raises(f"{self.unexpected_run} consecutive unexpected errors in "
                              f"{self.where} (a bug, not bad data); {last}") from cause
        if limit.max_consecutive is not None and self.failed_run >= limit.max_consecutive:
            hint = f": {self.hint}" if self.hint else ""
            raise self.raises(f"{self.failed_run} consecutive samples failed in "
                              f"{self.where}{hint}; {last}") from cause
