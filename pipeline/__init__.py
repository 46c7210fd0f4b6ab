"""How sa2va-shards runs at scale: Ray orchestration only.

Nothing here decides shard contents or sample bytes (that is `sa2va_shards.build.plan` and
`sa2va_shards.build.shard`), which is why a build is byte-identical whatever the worker count.
"""
