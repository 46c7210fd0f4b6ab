"""The building half: raw dataset -> a committed, verified version of WebDataset shards.

`run_build` owns the commit protocol; `process_shard` is the unit of work (one tar); a
`Runner` only decides where shard jobs run (`SerialRunner` here, Ray in `pipeline`).
"""

from sa2va_shards.build.run import BuildResult, run_build
from sa2va_shards.build.runners import Runner, SerialRunner, make_runner
from sa2va_shards.build.shard import process_shard

__all__ = ["BuildResult", "Runner", "SerialRunner", "make_runner", "process_shard", "run_build"]
