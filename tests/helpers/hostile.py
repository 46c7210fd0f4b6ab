"""Hostile inputs that only the tests build: they prove the readers refuse code, unexecuted.

The installed package's `unsafe_pickle` faults name a harmless class; a pickle that would run
a shell command lives here, never in `src/`.
"""

from __future__ import annotations

from pathlib import Path


def exploit_pickle(command: str) -> bytes:
    """Protocol-0 pickle bytes that call `os.system(command)` when loaded by a plain
    `pickle.loads` (the readers must refuse them unexecuted)."""
    if "\n" in command:
        raise ValueError("command must be one line")
    return b"cos\nsystem\n(V" + command.encode("raw_unicode_escape") + b"\ntR."


def touch_exploit(marker: Path) -> bytes:
    """`exploit_pickle` that creates `marker`: its absence shows nothing ran."""
    return exploit_pickle(f"touch {marker}")
