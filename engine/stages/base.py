"""Small helpers every stage shares: how a request samples, asking the LLM, reading sandbox
outcomes, and counting sub-items (answers, cases, responses) in their own funnel rows."""
from __future__ import annotations

import ast
from collections import Counter
from dataclasses import dataclass

from engine.config import Config
from engine.llm import Completion, SamplingParams
from engine.prompting import render, user_message
from engine.roles import RESPONDER
from engine.stage import Context, Stopped
from sandbox_pool import Outcome
from sandbox_pool.outcome import OK


@dataclass(frozen=True)
class Sampling:
    """How one kind of request samples: `n` answers of at most `max_tokens` at `temperature`."""

    n: int
    temperature: float
    max_tokens: int


def judge_sampling(cfg: Config) -> Sampling:
    """The request of every judge call: checkable, back-translation, NLI, score."""
    return Sampling(1, cfg.backtranslate.judge_temperature, cfg.backtranslate.judge_max_tokens)


async def ask(ctx: Context, prompt: str, sampling: Sampling, *, role: str,
              json_schema: str | None = None) -> list[Completion]:
    """One chat request with `n` samples of the same prompt (the server's prefix cache is shared),
    to the LLM of `role` (engine.roles). `json_schema`: constrained decoding (SGLang and
    llama-server both accept it)."""
    params = SamplingParams(max_new_tokens=sampling.max_tokens, temperature=sampling.temperature,
                            json_schema=json_schema)
    _refuse_when_stopping(ctx)
    return await ctx.llm_for(role).chat(user_message(prompt), n=sampling.n, params=params)


async def ask_plain(ctx: Context, query: str, sampling: Sampling) -> list[Completion]:
    """A reply to `query` alone, no instruction given: the verifier stage's expected-False case
    and the responses stage's plain reject. One prompt for both, so that with the same sampling
    the LLM cache answers each query once; so one role, the responder, writes it for both."""
    return await ask(ctx, render("case_plain", query=query), sampling, role=RESPONDER)


async def complete(ctx: Context, prompt: str, sampling: Sampling, *, role: str,
                   stop: tuple[str, ...]) -> list[Completion]:
    """One raw text completion (no chat template): the model of `role` continues `prompt` until
    a stop string."""
    params = SamplingParams(max_new_tokens=sampling.max_tokens, temperature=sampling.temperature, stop=stop)
    _refuse_when_stopping(ctx)
    return await ctx.llm_for(role).generate(prompt, n=sampling.n, params=params)


def _refuse_when_stopping(ctx: Context) -> None:
    """A stage that fans out sends its next round of requests only while the run goes on."""
    if ctx.stopping:
        raise Stopped("the run is stopping")


def outcome_bool(outcome: Outcome) -> bool | None:
    """The bool a function returned, or None when it errored, timed out or returned a non-bool."""
    if outcome.status == OK and type(outcome.value) is bool:
        return outcome.value
    return None


def code_key(code: str) -> str:
    """Two functions that differ only in comments or layout are the same function."""
    try:
        return ast.dump(ast.parse(code))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return "\n".join(line.rstrip() for line in code.strip().splitlines())


def tally(ctx: Context, row: str, kept: int, dropped: Counter) -> None:
    """Count sub-items of one item in funnel row `row` ("<stage>.<unit>"): in = kept + dropped."""
    ctx.funnel.count_in(row, kept + sum(dropped.values()))
    ctx.funnel.count_kept(row, kept)
    ctx.funnel.count_out(row, kept)            # a sub-item row emits what it keeps
    for reason, n in dropped.items():
        if n:
            ctx.funnel.drop(row, reason, n)
