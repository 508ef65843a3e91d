"""Scale-out on Ray: `autoif run --ray [ADDRESS]` (pip extra `ray`).

sharding.py: instructions -> shards by id, and where each shard keeps its state;
worker.py:   one shard's phases through the shared run path, as typed event streams, and the
             Ray actor around them;
driver.py:   starts the actors, streams their records back, merges funnels, exports.
Nothing here imports Ray until a sharded run starts.
"""
from engine.distributed.driver import Driver, RayOptions, run_sharded

__all__ = ["Driver", "RayOptions", "run_sharded"]
