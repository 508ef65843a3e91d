"""Configuration of the SGLang protocol simulator (a test double of SGLang's HTTP server)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class LatencyModel:
    """Continuous-batching cost model; defaults are roughly an 8B model on one H100.

    Each scheduler step admits queued requests up to `max_running`, pays their prefill
    (uncached prompt tokens / `prefill_tps`), then decodes one token for every running
    request in `decode_base_ms + decode_per_req_ms * running` (15 ms at batch 1 rising
    to 35 ms at 256). `speed` divides every delay (2.0 = twice as fast); `zero_latency`
    skips the clock entirely and answers as fast as the event loop allows (benchmarks).
    """

    max_running: int = 256
    prefill_tps: float = 20_000.0
    decode_base_ms: float = 15.0
    decode_per_req_ms: float = 20.0 / 255
    speed: float = 1.0
    zero_latency: bool = False

    def step_seconds(self, running: int, prefill_tokens: int) -> float:
        decode = (self.decode_base_ms + self.decode_per_req_ms * running) / 1000.0
        prefill = prefill_tokens / self.prefill_tps if self.prefill_tps > 0 else 0.0
        return (decode + prefill) / max(self.speed, 1e-9)


@dataclass
class FaultConfig:
    """Injected faults; all draws come from one `random.Random(seed)`."""

    fail_rate: float = 0.0             # generation requests answered `fail_status` at once
    fail_status: int = 503
    drop_rate: float = 0.0             # connection closed mid-request (no response / cut stream)
    stream_error_rate: float = 0.0     # streams that end with an in-stream error event
    slow_first_token_rate: float = 0.0
    slow_first_token_s: float = 2.0    # extra delay before such a request is scheduled
    outage_at: float | None = None     # seconds after start: stop accepting connections ...
    outage_for: float = 5.0            # ... for this long, then come back
    seed: int = 0


@dataclass
class SimConfig:
    host: str = "127.0.0.1"
    port: int = 0                      # 0: pick a free port
    model: str = "sim-model"           # served_model_name
    model_path: str = "autoif-sim/sim-8b-instruct"
    responder: Any = "echo"            # see engine.sim.responders.load_responder
    latency: LatencyModel = field(default_factory=LatencyModel)
    faults: FaultConfig = field(default_factory=FaultConfig)
    allow_n: bool = True               # False mimics llama-server, which rejects n > 1
    eos_token_id: int = 2              # reported as finish_reason.matched on a natural stop
    context_len: int = 32_768
    max_total_tokens: int = 400_000    # KV pool size reported in server info
    prefix_cache_entries: int = 50_000  # radix-cache stand-in: remembered prompt prefixes
    stream_default_include_usage: bool = False
    name: str = ""                     # for logs; defaults to the URL
