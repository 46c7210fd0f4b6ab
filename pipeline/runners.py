"""Run one function over many tasks: in-process (debugging) or as Ray tasks. Same signature,
same results; results are yielded as tasks finish (order does not matter to the caller)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from tqdm import tqdm

__all__ = ["run_ray", "run_serial"]

log = logging.getLogger(__name__)


def run_serial(fn: Callable[..., Any], tasks: Sequence[Any], *, progress: bool = True,
               desc: str = "shards", **kwargs: Any) -> Iterator[Any]:
    """Call `fn(task, **kwargs)` for each task in this process."""
    for task in tqdm(tasks, desc=desc, unit="shard", disable=not progress):
        yield fn(task, **kwargs)


def _init_ray(address: str | None, num_cpus: int | None) -> bool:
    """Connect to `address` or start a local Ray; returns True if this call started it."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)
    return True


def run_ray(fn: Callable[..., Any], tasks: Sequence[Any], *, address: str | None = None,
            num_cpus: int | None = None, cpus_per_task: float = 1.0, max_retries: int = 3,
            progress: bool = True, desc: str = "shards", **kwargs: Any) -> Iterator[Any]:
    """Run `fn(task, **kwargs)` as one Ray task per item, yielding results as they finish.

    `cpus_per_task` sets how many tasks run at once (CPUs / cpus_per_task); the output does
    not depend on it.

    Worker crashes are retried by Ray (`max_retries`); an exception raised by `fn` itself is
    not retried and aborts the run (per-sample data errors never reach here: the shard job
    turns them into reject rows).
    """
    import ray

    started = _init_ray(address, num_cpus)
    pending: list = []
    try:
        remote = ray.remote(num_cpus=cpus_per_task, max_retries=max_retries)(fn)
        shared = {k: ray.put(v) for k, v in kwargs.items()}
        pending = [remote.remote(t, **shared) for t in tasks]
        with tqdm(total=len(pending), desc=desc, unit="shard", disable=not progress) as bar:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                try:
                    result = ray.get(done[0])
                except ray.exceptions.RayTaskError as e:  # re-raise the task's own exception
                    raise e.as_instanceof_cause() from None
                yield result
                bar.update(1)
    finally:
        for ref in pending:  # an abort or Ctrl-C: stop the rest, a rerun resumes
            ray.cancel(ref)
        if started:
            ray.shutdown()
