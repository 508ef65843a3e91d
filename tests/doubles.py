"""Test doubles shared by the pipeline tests (no tests here; imported as tests.doubles).

ScriptedLLM implements the LLM protocol in-process: a script maps each prompt to answers.
`template_of` tells which prompt template a request was rendered from, by the template's
first line, so scripts do not repeat template text. RecordingPool wraps the REAL
sandbox_pool.SandboxPool and records each evaluate_many batch.
"""
from __future__ import annotations

from typing import Callable, Sequence

from engine.llm import Completion, SamplingParams
from engine.prompting import TEMPLATES, template
from sandbox_pool import Limits, PoolConfig, SandboxPool

Script = Callable[[str, str, int], Sequence["str | Completion"]]   # (template name, prompt, n) -> answers


def template_of(prompt: str) -> str:
    for name in TEMPLATES:
        first = template(name).template.strip().splitlines()[0]
        if "$" not in first and prompt.startswith(first):
            return name
    return "response"


class ScriptedLLM:
    model = "scripted-model"

    def __init__(self, script: Script) -> None:
        self.script = script
        self.calls: list[tuple[str, str, int, SamplingParams | None]] = []

    async def chat(self, messages, *, n: int = 1, params: SamplingParams | None = None) -> list[Completion]:
        return await self.generate(messages[-1]["content"], n=n, params=params)

    async def generate(self, prompt: str, *, n: int = 1, params: SamplingParams | None = None) -> list[Completion]:
        name = template_of(prompt)
        self.calls.append((name, prompt, n, params))
        return [a if isinstance(a, Completion) else Completion(text=a) for a in self.script(name, prompt, n)]

    def count(self, name: str) -> int:
        return sum(1 for c in self.calls if c[0] == name)


class RecordingPool:
    """The real pool, plus a log of the batches sent to it."""

    def __init__(self, pool: SandboxPool) -> None:
        self.pool = pool
        self.batches: list[list[tuple[str, list]]] = []
        self.more_coming: list[bool] = []   # the hint each batch came with

    async def evaluate_many(self, jobs, *, urgent=False, more_coming=False):
        jobs = [(code, list(inputs)) for code, inputs in jobs]
        self.batches.append(jobs)
        self.more_coming.append(more_coming)
        return await self.pool.evaluate_many(jobs, urgent=urgent, more_coming=more_coming)


def real_pool() -> SandboxPool:
    return SandboxPool(PoolConfig(workers=2, limits=Limits(timeout_s=1.0, memory_mb=256)))
