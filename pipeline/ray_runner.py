"""The Ray runner: one Ray task per shard job, on a local Ray or a cluster (`--address`).

Imported only when a build asks for Ray (`sa2va_shards.build.runners.make_runner`). It runs
jobs and nothing else: the same jobs give the same bytes as the serial runner (tested).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass
from typing import Any

from sa2va_shards.errors import ConfigError

__all__ = ["RayRunner", "init_ray", "ray_session", "run_ray"]

log = logging.getLogger(__name__)


def _has_ray_client() -> bool:
    try:
        import grpc  # noqa: F401 - Ray Client's transport
    except ImportError:
        return False
    return True


def _check_client(address: str) -> None:
    """`ray://` needs Ray Client (grpcio), which `ray[data]` does not pull in: say the one
    command that fixes it, before Ray fails with a traceback."""
    if address.startswith("ray://") and not _has_ray_client():
        import ray

        raise ConfigError(f"--address {address}: Ray Client is not installed; fix: "
                          f"pip install 'ray[client]=={ray.__version__}'")


def init_ray(address: str | None, num_cpus: int | None) -> bool:
    """Connect to `address` or start a local Ray; returns True if this call started it.

    Raises:
        ConfigError: no cluster at `address`, or Ray Client missing for `ray://` (one line).
    """
    import ray

    if ray.is_initialized():
        return False
    if address:
        _check_client(address)
    try:
        if address:
            ray.init(address=address, log_to_driver=True)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)
    except ConnectionError as e:
        hint = ("start one on this node with `ray start --head`, or leave out --address for a "
                "local Ray" if address in ("auto", None) else "is the head node up and reachable?")
        raise ConfigError(f"--address {address}: no Ray cluster found ({hint})") from e
    except ValueError as e:  # Ray's own check, should the import probe above miss it
        if "ray[client]" not in str(e):
            raise
        raise ConfigError(f"--address {address}: Ray Client is not installed; fix: "
                          f"pip install 'ray[client]=={ray.__version__}'") from e
    log.info("ray: %s", "connected to " + address if address else "local Ray started")
    return True


@contextlib.contextmanager
def ray_session(address: str | None, num_cpus: int | None) -> Iterator[None]:
    """Ray up for the block (a live session is reused, and left up), down after it."""
    started = init_ray(address, num_cpus)
    try:
        yield
    finally:
        if started:
            import ray

            ray.shutdown()


def run_ray(fn: Callable[..., Any], tasks: Sequence[Any], *, address: str | None = None,
            num_cpus: int | None = None, cpus_per_task: float = 1.0, max_retries: int = 3,
            **kwargs: Any) -> Iterator[Any]:
    """Run `fn(task, **kwargs)` as one Ray task per item, yielding results as they finish.

    `cpus_per_task` sets how many tasks run at once (CPUs / cpus_per_task); the output does
    not depend on it.

    Worker crashes are retried by Ray (`max_retries`); an exception raised by `fn` itself is
    not retried and aborts the run (per-sample data errors never reach here: the shard job
    turns them into reject rows).
    """
    import ray

    started = init_ray(address, num_cpus)
    pending: list = []
    try:
        remote = ray.remote(num_cpus=cpus_per_task, max_retries=max_retries)(fn)
        shared = {k: ray.put(v) for k, v in kwargs.items()}
        pending = [remote.remote(t, **shared) for t in tasks]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                result = ray.get(done[0])
            except ray.exceptions.RayTaskError as e:  # re-raise the task's own exception
                raise e.as_instanceof_cause() from None
            yield result
    finally:
        for ref in pending:  # an abort or Ctrl-C: stop the rest, a rerun resumes
            ray.cancel(ref)
        if started:
            ray.shutdown()


@dataclass(frozen=True)
class RayRunner:
    """`sa2va_shards.build.runners.Runner` on Ray: `cpus_per_task` sets how many jobs run at
    once, never what they write."""

    address: str | None = None
    num_cpus: int | None = None
    cpus_per_task: float = 1.0
    name: str = "ray"

    def session(self) -> ContextManager[None]:
        return ray_session(self.address, self.num_cpus)

    def map(self, fn: Callable[..., Any], tasks: Sequence[Any], **shared: Any) -> Iterator[Any]:
        return run_ray(fn, tasks, address=self.address, num_cpus=self.num_cpus,
                       cpus_per_task=self.cpus_per_task, **shared)
