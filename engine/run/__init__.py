"""The run path every way of running shares (after datatrove's one `_run_for_rank`).

- `RunSpec`: what a run is (settings, directory, stages, inputs);
- `open_engine` -> `Engine`: servers, client, sandbox pool, stage context;
- `RunStore`: the run directory's records by what they are;
- `run_shard`: the stages over a source, observed, recorded where a Recorder says;
- typed events a Ray shard streams to its driver;
- the run's end: exports, summary, storage failures as one line.
"""
from engine.run.engine import (Client, Engine, NoPool, Pool, check_reachable, make_client, make_pool,
                               open_engine)
from engine.run.events import Done, EventQueue, Results, Sampled, ShardEvent, Tick, Verified
from engine.run.finish import (coverage, export_grpo_run, export_options, export_run, run_start, stopped_by_storage,
                               storage_errors, write_summary)
from engine.run.inputs import check_output_dir, load_inputs, preflight
from engine.run.record import Recorded, Recorder, RoundStored, Stored, Streamed, Unrecorded
from engine.run.shard import build_stages, run_shard
from engine.run.spec import RunSpec
from engine.run.store import RunStore, input_hash

__all__ = [
    "Client", "Done", "check_reachable", "Engine", "EventQueue", "NoPool", "Pool", "Recorded", "Recorder", "Results",
    "RoundStored", "RunSpec", "RunStore", "Sampled", "ShardEvent", "Stored", "Streamed", "Tick", "Unrecorded",
    "Verified", "build_stages", "check_output_dir", "coverage", "export_grpo_run", "export_options", "export_run",
    "input_hash", "load_inputs", "make_client", "make_pool", "open_engine", "preflight", "run_shard",
    "run_start", "stopped_by_storage", "storage_errors", "write_summary",
]
