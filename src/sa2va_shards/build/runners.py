"""Where shard jobs run. A runner only runs: the same jobs give the same bytes on any runner
(serial == Ray, tested); progress, commit and accounting are the build's (`build.run`).

A runner has a `name`, a `session()` context (up before anything is written, so a wrong
cluster address fails early) and `map(fn, tasks, **shared)`, which yields `fn(task, **shared)`
for every task as tasks finish. `SerialRunner` runs in this process; the Ray runner lives in
`pipeline.ray_runner` and is imported only when asked for, so the library and the loader
install and import without Ray.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from sa2va_shards.errors import ConfigError

__all__ = ["RAY_MISSING", "Runner", "SerialRunner", "make_runner", "ray_available"]

log = logging.getLogger(__name__)

RAY_MISSING = ("Ray is not installed; a Ray build needs: pip install 'sa2va-shards[ray]' "
               "(or use --runner serial)")


class Runner(Protocol):
    name: str

    def session(self) -> ContextManager[None]: ...

    def map(self, fn: Callable[..., Any], tasks: Sequence[Any], **shared: Any) -> Iterator[Any]:
        ...


@dataclass(frozen=True)
class SerialRunner:
    """Every job in this process, in order (debugging, small builds)."""

    name: str = "serial"

    def session(self) -> ContextManager[None]:
        return contextlib.nullcontext()

    def map(self, fn: Callable[..., Any], tasks: Sequence[Any], **shared: Any) -> Iterator[Any]:
        for task in tasks:
            yield fn(task, **shared)


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def make_runner(name: str, *, address: str | None = None, num_cpus: int | None = None,
                cpus_per_task: float = 1.0) -> Runner:
    """'serial' or 'ray' (a local Ray, or the cluster at `address`).

    Raises:
        ConfigError: an unknown name, or 'ray' without Ray installed (one line saying the fix).
    """
    if name == "serial":
        return SerialRunner()
    if name != "ray":
        raise ConfigError(f"runner: {name!r} is not one of auto, ray, serial")
    if not ray_available():
        raise ConfigError(RAY_MISSING)
    from pipeline.ray_runner import RayRunner

    return RayRunner(address=address, num_cpus=num_cpus, cpus_per_task=cpus_per_task)
