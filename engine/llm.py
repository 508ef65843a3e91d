"""What the pipeline needs from a language model, independent of the transport.

`engine.client.LLMClient` implements this over HTTP (SGLang native or OpenAI-compatible);
`engine.cache.CachedLLM` wraps any implementation with a persistent answer cache.
Pipeline stages depend only on this protocol.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence


@dataclass(frozen=True, slots=True)
class Completion:
    """One sampled answer."""

    text: str
    finish_reason: str = "stop"          # "stop" | "length" | "abort" | ...
    prompt_tokens: int = 0
    completion_tokens: int = 0
    server: str = ""                     # which server answered (for balancing stats)


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """The sampling knobs every backend understands (SGLang names)."""

    max_new_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    json_schema: str | None = None       # SGLang constrained decoding; ignored where unsupported
    regex: str | None = None
    seed: int | None = None
    extra: dict = field(default_factory=dict)


Message = dict  # {"role": "system"|"user"|"assistant", "content": str}


class LLM(Protocol):
    """The generation interface stages use. `n` samples share one prompt (prefix-cache friendly)."""

    model: str

    async def generate(self, prompt: str, *, n: int = 1,
                       params: SamplingParams | None = None) -> list[Completion]: ...

    async def chat(self, messages: Sequence[Message], *, n: int = 1,
                   params: SamplingParams | None = None) -> list[Completion]: ...
