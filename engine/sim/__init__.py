"""SGLang protocol simulator: a test double of SGLang's HTTP server.

Serves SGLang's native and OpenAI-compatible routes with SGLang's shapes, a continuous-
batching latency model, pluggable answer content and fault injection, so the client and
the pipeline can be tested and benchmarked without a GPU. Not a model: answers come from
a responder (echo, seeded random, scripted).
"""
from engine.sim.config import FaultConfig, LatencyModel, SimConfig
from engine.sim.responders import RandomResponder, ScriptedResponder, echo, load_responder
from engine.sim.server import SimCounters, SimServer

__all__ = [
    "FaultConfig", "LatencyModel", "SimConfig", "SimCounters", "SimServer",
    "RandomResponder", "ScriptedResponder", "echo", "load_responder",
]
