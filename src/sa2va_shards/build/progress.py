"""What a running build tells people and machines: a progress bar per dataset (samples/s,
reject rate, ETA) and an optional JSON-lines event log a cluster user can `tail -f`.

Reads only the small `ShardResult`s the runners hand back; decides nothing about the output.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from sa2va_shards.records import ShardResult

__all__ = ["BuildProgress"]

log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _reasons(result: ShardResult) -> dict[str, int]:
    return dict(sorted(Counter(r.reason for r in result.rejects if r.level == "sample").items()))


class BuildProgress:
    """Progress of one build: a tqdm bar labelled with the dataset, counted in input samples,
    and (with `log_json`) one JSON object a line: `start`, one `shard` per finished shard,
    then `end`. Lines are flushed as written, so `tail -f` follows a long cluster build.

    Args:
        dataset: the bar's label and every event's `dataset`.
        version: every event's `version`.
        total_samples: inputs of the whole build (the bar's total).
        total_shards: shards of the whole build.
        bar: show the bar (stderr).
        log_json: append events to this file (created with its folder).
    """

    def __init__(self, *, dataset: str, version: str, total_samples: int, total_shards: int,
                 bar: bool = True, log_json: str | Path | None = None) -> None:
        self.dataset, self.version = dataset, version
        self.total_samples, self.total_shards = total_samples, total_shards
        self.done_samples = self.done_shards = self.rejected = 0
        self._run_samples = 0  # samples built by this run (resumed shards are not a rate)
        self._t0 = time.perf_counter()
        self._log: TextIO | None = None
        if log_json:  # first: a log that cannot be opened leaves no bar behind
            Path(log_json).parent.mkdir(parents=True, exist_ok=True)
            self._log = open(log_json, "a", encoding="utf-8")  # closed in close()
        self._bar = tqdm(total=total_samples, desc=dataset, unit="sample", disable=not bar,
                         dynamic_ncols=True)

    def _emit(self, event: str, **fields: Any) -> None:
        if self._log is None:
            return
        line = {"time": _now(), "event": event, "dataset": self.dataset,
                "version": self.version, **fields}
        self._log.write(json.dumps(line) + "\n")
        self._log.flush()

    @staticmethod
    def log_once(log_json: str | Path | None, event: str, **fields: Any) -> None:
        """One event outside a running build (a version that is already built)."""
        if log_json:
            Path(log_json).parent.mkdir(parents=True, exist_ok=True)
            with open(log_json, "a", encoding="utf-8") as f:
                f.write(json.dumps({"time": _now(), "event": event, **fields}) + "\n")

    def start(self, resumed: list[ShardResult], *, plan_rejects: int = 0, **fields: Any) -> None:
        """The plan is fixed: say what will run. Shards a crashed run finished, and inputs the
        plan rejected (bad ids, duplicates), count as done."""
        for r in resumed:
            self._count(r)
        self.done_samples += plan_rejects
        self.rejected += plan_rejects
        self._postfix()
        self._bar.update(self.done_samples)
        self._emit("start", total_samples=self.total_samples, total_shards=self.total_shards,
                   resumed_shards=len(resumed), plan_rejects=plan_rejects, **fields)

    def _count(self, result: ShardResult) -> None:
        self.done_shards += 1
        self.done_samples += result.read
        self.rejected += sum(r.level == "sample" for r in result.rejects)

    def _postfix(self) -> None:
        rate = self.rejected / max(self.done_samples, 1)
        self._bar.set_postfix_str(f"shards {self.done_shards}/{self.total_shards}, rejected "
                                  f"{self.rejected} ({100 * rate:.1f}%)", refresh=False)

    def rates(self) -> dict[str, float | None]:
        """samples/s of this run, reject rate so far, and the ETA in seconds (None until a
        shard of this run has finished)."""
        elapsed = time.perf_counter() - self._t0
        speed = self._run_samples / elapsed if elapsed > 0 else 0.0
        left = self.total_samples - self.done_samples
        return {"elapsed_s": round(elapsed, 3), "samples_per_s": round(speed, 2),
                "reject_rate": round(self.rejected / max(self.done_samples, 1), 4),
                "eta_s": round(left / speed, 1) if speed > 0 else None}

    def shard(self, result: ShardResult) -> None:
        """One shard finished: update the bar, log it (-v) and emit a `shard` event."""
        self._count(result)
        self._run_samples += result.read
        self._postfix()  # before update: update redraws, with the new counts
        self._bar.update(result.read)
        rejected = _reasons(result)
        log.info("%s %s: read %d, written %d, rejected %d%s in %.1f s", self.dataset,
                 result.shard.file, result.read, len(result.samples), sum(rejected.values()),
                 f" ({', '.join(f'{k} {v}' for k, v in rejected.items())})" if rejected else "",
                 result.seconds)
        self._emit("shard", shard=result.shard.file, read=result.read,
                   written=len(result.samples), rejected=sum(rejected.values()),
                   rejected_by_reason=rejected, seconds=round(result.seconds, 3),
                   done_shards=self.done_shards, total_shards=self.total_shards,
                   done_samples=self.done_samples, total_samples=self.total_samples,
                   **self.rates())

    def end(self, status: str, **fields: Any) -> None:
        """The build is over: `status` is built, reused, aborted or failed."""
        self._emit("end", status=status, **fields)

    def close(self) -> None:
        self._bar.close()
        if self._log is not None:
            self._log.close()
            self._log = None
