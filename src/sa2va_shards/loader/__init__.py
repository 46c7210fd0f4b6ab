"""The training half: stream a build's shards into a training step.

`ShardDataset` (a torch `IterableDataset`) and `ShardLoader` read builds, dataset folders, tar
lists, mixtures and object-store URLs; with an `Encoder` they yield Sa2VA's model input dict.
Nothing here imports Ray or any build-side module.
"""

from sa2va_shards.loader.dataset import (
    CorruptDataError,
    CorruptDataWarning,
    LoaderConfig,
    ShardDataset,
    ShardLoader,
    SkippedSamplesWarning,
    check_preprocessing,
    collate,
)
from sa2va_shards.loader.encode import Encoder, add_special_tokens
from sa2va_shards.loader.mixture import MixSource, Mixture, load_mixture

__all__ = [
    "CorruptDataError",
    "CorruptDataWarning",
    "Encoder",
    "LoaderConfig",
    "MixSource",
    "Mixture",
    "ShardDataset",
    "ShardLoader",
    "SkippedSamplesWarning",
    "add_special_tokens",
    "check_preprocessing",
    "collate",
    "load_mixture",
]
