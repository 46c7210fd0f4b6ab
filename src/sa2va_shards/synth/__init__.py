"""Small raw datasets in the real on-disk formats, with injected faults: the demo's and the
tests' inputs, and `sa2va-shards synth`.

One module per published format (the readers decide the shard bytes; nothing here does). Each
writes with its own seeded generator, so the same arguments give the same files byte for byte
(`tests/test_provenance.py`). The `unsafe_pickle` faults write a pickle that names a class:
the readers refuse it, and plain `pickle` would load it harmlessly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from sa2va_shards.errors import ConfigError
from sa2va_shards.synth import chat, coco, describe_anything, gcg, osprey, refcoco, refvideo, sav

__all__ = ["SYNTHS", "Synth", "synth_dataset"]


@dataclass(frozen=True)
class Synth:
    """How to write one format: `write(out_dir, *, n_items, seed, faults) -> root`, and the
    fault names it can inject."""

    write: Callable[..., Path]
    faults: tuple[str, ...]


#: reader format -> its synthesiser (the same names as `readers.READERS`).
SYNTHS: dict[str, Synth] = {
    "coco": Synth(coco.write, coco.COCO_FAULTS),
    "describe_anything": Synth(describe_anything.write, describe_anything.DAM_FAULTS),
    "osprey": Synth(osprey.write, osprey.OSPREY_FAULTS),
    "refcoco": Synth(refcoco.write, refcoco.REFCOCO_FAULTS),
    **{fmt: Synth(partial(refvideo.write, fmt), refvideo.REFVIDEO_FAULTS)
       for fmt in ("mevis", "revos", "refytvos")},
    "sav": Synth(sav.write, sav.SAV_FAULTS),
    "gcg": Synth(gcg.write, gcg.GCG_FAULTS),
    "llava": Synth(chat.write_llava, chat.LLAVA_FAULTS),
    "chatunivi": Synth(chat.write_chatunivi, chat.CHATUNIVI_FAULTS),
}


def synth_dataset(name: str, out_dir: Path, *, n_items: int = 24, seed: int = 0,
                  faults: tuple[str, ...] = ()) -> Path:
    """Write a small raw dataset of format `name` under `out_dir`; returns its root.

    Raises:
        ConfigError: an unknown format.
        ValueError: a fault the format cannot inject.
    """
    if name not in SYNTHS:
        raise ConfigError(f"unknown reader format {name!r}; known: {', '.join(sorted(SYNTHS))}")
    synth = SYNTHS[name]
    unknown = set(faults) - set(synth.faults)
    if unknown:
        raise ValueError(f"unknown faults {sorted(unknown)}; known: {synth.faults}")
    return synth.write(Path(out_dir), n_items=n_items, seed=seed, faults=tuple(faults))
