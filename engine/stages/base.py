"""Small helpers every stage shares: reading the config, asking the LLM, reading sandbox outcomes,
and counting sub-items (answers, cases, responses) in their own funnel rows."""
from __future__ import annotations

import ast
from collections import Counter

from engine.config import Config
from engine.llm import Completion, SamplingParams
from engine.prompting import user_message
from engine.stage import Context
from sandbox_pool import Outcome
from sandbox_pool.outcome import OK


def settings(ctx: Context) -> Config:
    """The run's Config (defaults when the context carries none)."""
    return ctx.config if isinstance(ctx.config, Config) else Config()


async def ask(ctx: Context, prompt: str, *, n: int, temperature: float, max_tokens: int) -> list[Completion]:
    """One chat request with `n` samples of the same prompt (the server's prefix cache is shared)."""
    params = SamplingParams(max_new_tokens=max_tokens, temperature=temperature)
    return await ctx.llm.chat(user_message(prompt), n=n, params=params)


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
