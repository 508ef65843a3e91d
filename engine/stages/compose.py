"""Composition: verified instructions joined into prompts of several constraints.

Each verified instruction gets its family (engine.families: the rules, else the LLM) and passes
on as it is, a one-constraint prompt as before. Per instruction, the stage also asks for
composed prompts in the proportions of `shares` (1, 2, 3, 4+ constraints): share[k-1]/share[0]
prompts of k constraints per instruction, the last share spread over its count..`max_n`,
the fraction drawn with a generator seeded by the run seed and the instruction id. Such a
request is filled by the instruction with partners of other families, no two of the group
conflicting (engine.stages.conflicts), picked in an order seeded by the ids, from the
instructions verified so far; a request that finds too few waits for later instructions.
Every pair of another family is checked once, as its second instruction arrives.
The queries stage joins a composed prompt to queries as it does one instruction.

Which instructions are verified before which depends on timing, so the stage waits for all of
them (the runner's `hold` barrier) and composes in instruction-id order: the same verified
instructions give the same groups however the run was timed, at any worker count, and a resumed
run (which replays them from its store) makes exactly the groups a clean run makes. The groups
are also kept in the run's store (ComposedGroups) as a record of what was composed.
"""
from __future__ import annotations

import asyncio
import hashlib
import random
from dataclasses import replace
from typing import Callable, Sequence

from engine.config import Config
from engine.families import OTHER, parse_family, rule_family
from engine.prompting import render
from engine.records import ComposedInstruction, ConflictPair, VerifiedInstruction
from engine.roles import JUDGE
from engine.stage import Context
from engine.stages.base import Sampling, ask, judge_sampling
from engine.stages.conflicts import ConflictCheck


def group_rates(shares: Sequence[float], max_n: int) -> dict[int, float]:
    """Composed prompts of each size asked for per instruction (whose own prompt is share[0])."""
    rates: dict[int, float] = {}
    last = len(shares)
    for k, share in enumerate(shares[1:], start=2):
        sizes = range(k, max_n + 1) if k == last else (k,)
        for n in sizes:
            if 2 <= n <= max_n:
                rates[n] = rates.get(n, 0.0) + share / shares[0] / len(sizes)
            elif n > max_n:
                rates[max_n] = rates.get(max_n, 0.0) + share / shares[0] / len(sizes)
    return rates


class ComposedGroups:
    """The groups a run has composed (lists of instruction ids, the anchor first), in the order
    made; `on_change` is given all of them after each new one (to store them)."""

    def __init__(self, groups: Sequence[Sequence[str]] | None = None,
                 on_change: Callable[[list[list[str]]], None] | None = None) -> None:
        self.groups = [list(g) for g in groups or ()]
        self.on_change = on_change

    def add(self, ids: list[str]) -> None:
        if ids in self.groups:          # a resumed run composes its groups again
            return
        self.groups.append(ids)
        if self.on_change is not None:
            self.on_change([list(g) for g in self.groups])


def _order_key(seed: int, anchor: str, other: str) -> str:
    return hashlib.sha256(f"{seed}:{anchor}:{other}".encode()).hexdigest()


class ComposeStage:
    """VerifiedInstruction -> the same with its family, then the composed prompts it completes.

    `shares`, `max_n`: the mix (module docstring); `seed`: the run seed; `checker`: the
    conflict check; `family_judge`: the request asking the LLM for a family the rules do not
    give (None: content/other); `on_conflict`: given each conflicting pair (to store it)."""

    name = "compose"

    @classmethod
    def from_config(cls, cfg: Config, on_conflict: Callable[[ConflictPair], None] | None = None,
                    groups: ComposedGroups | None = None) -> ComposeStage:
        """`groups`: where the groups are recorded (a run's store; None: nowhere)."""
        c = cfg.compose
        judge = judge_sampling(cfg)
        return cls(shares=c.shares, max_n=c.max, seed=cfg.run.seed,
                   checker=ConflictCheck(pass_threshold=cfg.responses.pass_threshold, judge=judge),
                   family_judge=judge if c.family_llm else None, on_conflict=on_conflict, groups=groups)

    def __init__(self, *, shares: Sequence[float], max_n: int, seed: int, checker: ConflictCheck,
                 family_judge: Sampling | None = None,
                 on_conflict: Callable[[ConflictPair], None] | None = None,
                 groups: ComposedGroups | None = None) -> None:
        self.rates = group_rates(shares, max_n)
        self.seed = seed
        self.checker = checker
        self.family_judge = family_judge
        self.on_conflict = on_conflict
        self.groups = groups or ComposedGroups()
        self.seen: dict[str, VerifiedInstruction] = {}          # by instruction id
        self.conflicts: set[frozenset[str]] = set()
        self.pending: list[tuple[str, int]] = []                # (instruction id, size) not yet filled
        self.made: set[frozenset[str]] = set()
        self._lock = asyncio.Lock()

    def hold(self, item: VerifiedInstruction) -> str:
        """Every instruction waits for the others, then comes in id order (module docstring)."""
        return item.instruction.id

    async def process(self, item: VerifiedInstruction, ctx: Context) -> list:
        item = replace(item, family=item.family or await self.family(item, ctx))
        ctx.funnel.count_in(f"compose.family.{item.family}")
        ctx.funnel.count_kept(f"compose.family.{item.family}")
        ctx.funnel.count_out(f"compose.family.{item.family}")
        # One instruction at a time: which partners a request finds then depends only on which
        # instructions came before, not on how their checks interleaved.
        async with self._lock:
            if item.instruction.id in self.seen:
                return [item]
            others = [o for o in self.seen.values() if o.family != item.family]
            found = await asyncio.gather(*(self.checker.check(item, o, ctx) for o in others))
            for o, conflict in zip(others, found):
                if conflict is not None:
                    self.conflicts.add(frozenset((item.instruction.id, o.instruction.id)))
                    if self.on_conflict is not None:
                        self.on_conflict(conflict)
            iid = item.instruction.id
            self.seen[iid] = item
            rng = random.Random(f"{self.seed}:compose:{iid}")
            for n, rate in sorted(self.rates.items()):
                self.pending += [(iid, n)] * (int(rate) + (rng.random() < rate % 1))
            groups = self._fill()
        for g in groups:
            row = f"compose.prompt.{len(g.members)}"
            ctx.funnel.count_in(row)
            ctx.funnel.count_kept(row)
            ctx.funnel.count_out(row)
        return [item, *groups]

    async def family(self, item: VerifiedInstruction, ctx: Context) -> str:
        found = rule_family(item.instruction.text)
        if found is not None or self.family_judge is None:
            return found or OTHER
        answers = await ask(ctx, render("family", instruction=item.instruction.text), self.family_judge,
                            role=JUDGE)
        return parse_family(answers[0].text) if answers else OTHER

    def _fill(self) -> list[ComposedInstruction]:
        """The pending requests that the instructions seen so far can fill, oldest first."""
        out, still = [], []
        for anchor_id, n in self.pending:
            group = self._group(self.seen[anchor_id], n)
            if group is None:
                still.append((anchor_id, n))
            else:
                self.made.add(frozenset(m.instruction.id for m in group))
                self.groups.add([m.instruction.id for m in group])
                out.append(ComposedInstruction(group))
        self.pending = still
        return out

    def _group(self, anchor: VerifiedInstruction, n: int) -> tuple[VerifiedInstruction, ...] | None:
        aid = anchor.instruction.id
        candidates = sorted((o for o in self.seen.values() if o.instruction.id != aid),
                            key=lambda o: _order_key(self.seed, aid, o.instruction.id))
        chosen = [anchor]
        for o in candidates:
            if len(chosen) == n:
                break
            if all(o.family != c.family and frozenset((o.instruction.id, c.instruction.id)) not in self.conflicts
                   for c in chosen):
                chosen.append(o)
        if len(chosen) < n or frozenset(c.instruction.id for c in chosen) in self.made:
            return None
        return tuple(chosen)
