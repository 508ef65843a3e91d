"""Augment: self-instruct new atomic instructions from samples of the seeds.

Each SeedBatch is one prompt showing a sample of seeds. Proposed instructions are parsed,
de-duplicated against everything seen so far (seeds included), and kept only if the LLM says a
Python function can check them. Seeds pass through unchanged (each in one batch's passthrough).
"""
from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

from engine.config import Config
from engine.dedup import Deduper
from engine.jsonl import read_texts
from engine.parsing import parse_instruction_list, parse_yes_no
from engine.prompting import packaged_file, render
from engine.records import Instruction, SeedBatch, normalize_instruction
from engine.roles import JUDGE, WRITER
from engine.stage import Context
from engine.stages.base import Sampling, ask, complete, judge_sampling, tally


def _seed_text(row: object) -> str | None:
    return (row.get("instruction") or row.get("text")) if isinstance(row, dict) else None


def load_seed_instructions(path: str | Path | None = None,
                           on_error: Callable[[str], None] | None = None) -> list[Instruction]:
    """Seeds from JSONL lines {"instruction": ...} (or "text"), or a .txt file's lines; exact duplicates removed.

    A bad line raises ValueError naming file and line, unless `on_error` takes the message.
    """
    path = Path(path) if path else packaged_file("seed_instructions.jsonl")
    seen: set[str] = set()
    seeds: list[Instruction] = []
    for text in read_texts(path, _seed_text, "missing field 'instruction'", on_error):
        key = normalize_instruction(text)
        if key not in seen:
            seen.add(key)
            seeds.append(Instruction(text=text, source="seed"))
    return seeds


def make_seed_batches(seeds: Sequence[Instruction], batches: int, shown: int, seed: int = 0) -> list[SeedBatch]:
    """`batches` prompts, each showing a random sample of `shown` seeds; seeds spread over passthroughs.

    With batches == 0 there is one batch that only passes the seeds through (no LLM call).
    """
    if batches <= 0:
        return [SeedBatch(index=0, shown=(), passthrough=tuple(seeds))]
    out = []
    for i in range(batches):
        rng = random.Random(f"{seed}:{i}")           # stable per batch: resumed runs ask the same prompts
        sample = rng.sample(list(seeds), min(shown, len(seeds)))
        out.append(SeedBatch(index=i, shown=tuple(sample), passthrough=tuple(seeds[i::batches])))
    return out


def format_examples(seeds: Sequence[Instruction]) -> str:
    return "\n".join(f"{i}. {s.text}" for i, s in enumerate(seeds, 1))


class InOrder:
    """Lets step i run only after steps 0..i-1 finished (or failed).

    Augment answers arrive in whatever order the server finishes them; running the dedup step
    in batch order makes which near-duplicate survives independent of timing, so a resumed run
    (answers replayed from the cache at once) keeps exactly the instructions of the first run.
    """

    def __init__(self) -> None:
        self._done: set[int] = set()
        self._next = 0
        self._changed = asyncio.Condition()

    async def wait_turn(self, i: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self._next >= i)

    async def finish(self, i: int) -> None:
        async with self._changed:
            self._done.add(i)
            while self._next in self._done:
                self._next += 1
            self._changed.notify_all()


class AugmentStage:
    """SeedBatch -> Instruction*: the batch's passthrough seeds plus new checkable instructions.

    `seeds`: every seed of the run, indexed in `deduper` here, up front, so a proposal that repeats
    a seed is dropped whichever batch finishes first. One AugmentStage holds one deduper for the run.
    `per_prompt`: new instructions asked for in each prompt; `sampling`: the augment request;
    `checkable`: the judge request asking whether code can check a proposal (None: no such filter);
    `style`: "chat" asks for a numbered list in a chat message; "list" sends the shown seeds as
    the start of a numbered list for the model to continue as raw text, stopping after
    `per_prompt` more items (a small chat model obeys the shown constraints instead of listing
    new ones; it continues a list reliably). `max_new`: at most this
    many new instructions kept per prompt over all its samples, the first in answer order
    (0: all): more samples make it likelier that a prompt yields some, without yielding more.
    """

    name = "augment"

    @classmethod
    def from_config(cls, cfg: Config, seeds: Sequence[Instruction] = ()) -> AugmentStage:
        a = cfg.augment
        return cls(seeds, deduper=Deduper(threshold=a.dedup_threshold, ngram=a.dedup_ngram),
                   per_prompt=a.per_prompt, style=a.style,
                   sampling=Sampling(a.samples, a.temperature, a.max_tokens),
                   checkable=judge_sampling(cfg) if a.checkable_filter else None, max_new=a.max_new)

    def __init__(self, seeds: Sequence[Instruction], *, deduper: Deduper, per_prompt: int,
                 sampling: Sampling, checkable: Sampling | None, style: str = "chat",
                 max_new: int = 0) -> None:
        self.seeds = tuple(seeds)
        self.deduper = deduper
        self.per_prompt = per_prompt
        self.max_new = max_new
        self.sampling = sampling
        self.checkable = checkable
        self.style = style
        self._order = InOrder()
        for s in self.seeds:
            deduper.add(s.text)

    async def process(self, batch: SeedBatch, ctx: Context) -> list[Instruction]:
        out: list[Instruction] = list(batch.passthrough)
        try:
            if not self.seeds:              # seeds given up front are indexed already
                for s in batch.passthrough:
                    self.deduper.add(s.text)
            if batch.shown:
                out += await self._propose(batch, ctx)
        finally:
            await self._order.finish(batch.index)   # also when the LLM call failed
        if not out:
            ctx.funnel.drop(self.name, "no_new_instructions")
        return out

    async def _propose(self, batch: SeedBatch, ctx: Context) -> list[Instruction]:
        answers = await self._ask(batch, ctx)
        await self._order.wait_turn(batch.index)
        dropped: Counter[str] = Counter()
        fresh: list[str] = []
        unreadable = Counter()
        for answer in answers:
            proposed = parse_instruction_list(answer.text)
            if not proposed:
                unreadable["no_list"] += 1
            for i, text in enumerate(proposed):
                if i >= self.per_prompt:    # asked for per_prompt: small models often write
                    dropped["beyond_count"] += 1  # more, and each one costs a run K verifiers
                    continue                # and all its queries
                reason = self.deduper.check(text)
                if reason:
                    dropped[reason] += 1
                else:
                    fresh.append(text)
        tally(ctx, f"{self.name}.answer", len(answers) - unreadable["no_list"], unreadable)
        await self._order.finish(batch.index)   # dedup done: the next batch may dedup now
        kept = fresh
        if self.checkable is not None and fresh:
            verdicts = await asyncio.gather(*(self._checkable(ctx, self.checkable, t) for t in fresh))
            kept = []
            for text, verdict in zip(fresh, verdicts):
                if verdict is True:
                    kept.append(text)
                else:
                    dropped["not_checkable" if verdict is False else "unparsable_checkable"] += 1
        if self.max_new and len(kept) > self.max_new:
            dropped["over_max_new"] += len(kept) - self.max_new
            kept = kept[:self.max_new]
        tally(ctx, f"{self.name}.candidate", len(kept), dropped)
        return [Instruction(text=t, source="augment") for t in kept]

    async def _ask(self, batch: SeedBatch, ctx: Context) -> list:
        if self.style != "list":
            prompt = render("augment", seeds=format_examples(batch.shown), count=self.per_prompt)
            return await ask(ctx, prompt, self.sampling, role=WRITER)
        first = len(batch.shown) + 1
        prompt = render("augment_list", seeds=format_examples(batch.shown), next=first)
        # Stop where the item after the last one asked for would begin, or at a blank line.
        answers = await complete(ctx, prompt, self.sampling, role=WRITER,
                                 stop=(f"\n{first + self.per_prompt}.", "\n\n"))
        return [replace(a, text=f"{first}.{a.text}") for a in answers]  # the list as the model wrote it

    async def _checkable(self, ctx: Context, judge: Sampling, text: str) -> bool | None:
        answers = await ask(ctx, render("checkable", instruction=text), judge, role=JUDGE)
        return parse_yes_no(answers[0].text) if answers else None
