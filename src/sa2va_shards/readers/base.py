"""What every reader shares: a frozen dataclass over `root` (Ray pickles it to the workers),
files under root read by the `safe_io` rules, and index files that stop the build when they
cannot be read (one file describes the whole set: nothing could be built without it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from sa2va_shards.errors import ConfigError, Reason, SampleError
from sa2va_shards.readers._safe_pickle import safe_load
from sa2va_shards.safe_io import load_setup_json, open_regular, read_data_file

__all__ = ["BaseReader"]


@dataclass(frozen=True, kw_only=True)
class BaseReader:
    """A reader's shape; subclasses add their options as fields (checked against
    `reader.options` by `config.reader_options`) and `list_items` / `load` / `item_files` /
    `index_files`."""

    #: the format name (`reader.format`).
    name: ClassVar[str] = ""
    #: the dataset folder (`reader.root`).
    root: str

    def index_files(self) -> list[str]:
        """The files `list_items` opens, relative to root: a root on an object store downloads
        these (and only these) to the driver's view, where every other file is a placeholder
        of its size (`build/inputs.py`). A reader that does not say cannot read a store."""
        raise NotImplementedError(f"{self.name} declares no index_files")

    def item_folders(self, ref: Any) -> list[str]:
        """Folders (relative to root) whose listing `item_files(ref)` reads: a shard job on a
        store lists them before it stages the item's files. Most readers list none."""
        return []

    def path(self, rel: str | Path) -> Path:
        """`<root>/<rel>` for a path the config names (trusted: it may be absolute, or a
        symlink to anywhere)."""
        return Path(self.root) / rel

    def read_data(self, folder: str, name: Any, *,
                  missing: Reason = Reason.MISSING_IMAGE) -> tuple[str, bytes]:
        """Read `<root>/<folder>/<name>` where `name` comes from the data: it must stay inside
        the folder and be a regular file (`safe_io.read_data_file`). Returns the name used in
        reject details (relative to root, so rows do not depend on where the dataset lives)
        and the bytes; `folder` "" is root itself."""
        shown = f"{folder}/{name}" if folder else str(name)
        return shown, read_data_file(self.path(folder), name, shown=shown, missing=missing)

    def setup_json(self, rel: str | Path, *, unreadable: str,
                   missing: str | None = None) -> tuple[Any, bool]:
        """An index JSON file under root and whether an object in it repeats a key
        (`safe_io.load_setup_json`: any failure is a `ConfigError`)."""
        return load_setup_json(self.path(rel), unreadable=unreadable, missing=missing)

    def setup_pickle(self, rel: str | Path, *, unreadable: str, missing: str) -> Any:
        """An index pickle under root through the restricted unpickler; any failure, an
        unsafe pickle included, is one `ConfigError` line shaped as `setup_json`'s."""
        path = self.path(rel)
        try:
            with open_regular(path) as f:
                return safe_load(f, name=path.name)
        except FileNotFoundError as e:
            raise ConfigError(f"{path}: {missing}") from e
        except OSError as e:
            raise ConfigError(f"{path}: {unreadable}: {e}") from e
        except SampleError as e:  # unsafe, corrupt or expanding
            raise ConfigError(f"{path}: {e.reason.value}: {e.detail}") from e
