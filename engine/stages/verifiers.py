"""Verifiers: K sampled Python `evaluate` functions per instruction, plus test cases.

Two ways to ask (config.verifier_style):
- "code" (default): the function is a few-shot code completion (prompts/verifier_code.txt ends
  with `# Constraint: ...` and the `def evaluate` line; stop at the next example), sampled K
  times in one request. Models of 0.5B parameters follow this; they copy the skeleton of a
  JSON-with-code prompt instead. The test cases come from separate requests (case_style):
  - "replies" (default): replies written to obey the constraint (expected True) and plain
    replies to the same queries (expected False). Every model can write a reply; a 0.5B model
    cannot write a failing example on purpose (asked for lists, its "break" side restates the
    "follow" side), but a plain reply breaks most constraints by itself. A reply that lands on
    the wrong side is what cross-validation drops: it disagrees with the functions.
  - "lists": one chat request (n = verifier_case_samples) constrained to a JSON object of
    passing ("follow") and failing ("break") replies; larger models write sharper edge cases.
- "json": one chat request with n=K, each answer a JSON object with the function as a string
  and its cases (the reference release's format, which `autoif stage` also reads).

Either way, answers that only echo the prompt's templates are dropped (a body of `...`/`pass`,
a few-shot example's function under another constraint, a case equal to a prompt example),
and functions and cases from all answers are pooled (de-duplicated) for cross-validation.

With `pairs` (config.minimal_pairs) every case is also edited to the other side of the
constraint (engine.stages.pairs), in one more request per case. Each edit is asked as soon as
its case is read (a reply case as soon as its reply is back), while the functions are still
generating, so the round adds the latency of one edit, not a stage.
"""
from __future__ import annotations

import asyncio
import functools
import re
from collections import Counter
from typing import Iterable, Sequence

import orjson

from engine.config import Config
from engine.llm import Completion
from engine.parsing import (ParseError, ParsedVerifier, parse_case_answer,
                            parse_code_completion, parse_verifier_answer, prompt_examples)
from engine.prompting import render, template
from engine.records import Case, Instruction, Query, Verifier, VerifierDraft, normalize_instruction
from engine.roles import CODER, RESPONDER
from engine.stage import Context
from engine.stages.base import Sampling, ask, ask_plain, code_key, complete, tally
from engine.stages.pairs import REJECT_REASONS, MinimalPairs
from engine.stages.queries import run_queries

# where a completed function ends: the next few-shot entry, a second definition, test code
CODE_STOPS = ("\n# Constraint", "\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\nassert ", "```")


def spread_temperatures(temperature: float, spread: float, n: int) -> list[float]:
    """`n` temperatures spread evenly over temperature +/- spread, lowest first (none below 0)."""
    if n < 2 or spread <= 0:
        return [temperature] * n
    return [max(0.0, temperature - spread + 2 * spread * i / (n - 1)) for i in range(n)]


def distinct_cases(cases: Iterable[Case]) -> list[Case]:
    """The first of each (text, verdict), in order."""
    out: dict[tuple[str, bool], Case] = {}
    for case in cases:
        out.setdefault((case.input, case.expected), case)
    return list(out.values())


def cases_schema(per_side: int) -> str:
    """JSON schema of a test-case answer: 1..per_side replies on each side."""
    side = {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": per_side}
    return orjson.dumps({"type": "object", "properties": {"follow": side, "break": side},
                         "required": ["follow", "break"], "additionalProperties": False}).decode()


@functools.lru_cache(maxsize=None)
def example_functions(name: str = "verifier_code") -> dict[str, str]:
    """code_key -> constraint of each worked example in a few-shot template."""
    out = {}
    for block in re.split(r"^# Constraint: ", template(name).template, flags=re.M)[1:]:
        constraint, _, code = block.partition("\n")
        if "$" not in constraint:
            out[code_key(code.strip() + "\n")] = normalize_instruction(constraint)
    return out


@functools.lru_cache(maxsize=None)
def example_cases(name: str) -> frozenset[str]:
    return frozenset(prompt_examples(template(name).template))


def pool_answers(instruction: Instruction, parsed: Iterable[ParsedVerifier]) -> VerifierDraft:
    """One draft from several parsed answers: distinct functions, distinct cases, first-seen order."""
    functions: dict[str, Verifier] = {}
    for p in parsed:
        if p.code:
            functions.setdefault(code_key(p.code), Verifier(code=p.code))
    return VerifierDraft(instruction=instruction, functions=tuple(functions.values()),
                         cases=tuple(distinct_cases(c for p in parsed for c in p.cases)))


def drop_echoed_cases(parsed: list[ParsedVerifier], examples: frozenset[str], case_counts: Counter) -> None:
    for p in parsed:
        kept = [c for c in p.cases if c.input.strip() not in examples]
        case_counts["template_echo"] += len(p.cases) - len(kept)
        p.cases = kept


def parse_answers(texts: Iterable[tuple[str, str]], answer_drops: Counter, case_counts: Counter) -> list[ParsedVerifier]:
    """Parse (text, finish_reason) JSON-style answers; failures land in `answer_drops` by reason."""
    parsed = []
    for text, finish in texts:
        try:
            p = parse_verifier_answer(text)
        except ParseError as exc:
            answer_drops["truncated" if finish == "length" else exc.reason] += 1
            continue
        case_counts["kept"] += len(p.cases)
        case_counts["bad_case"] += p.bad_cases
        parsed.append(p)
    return parsed


def parse_functions(instruction: Instruction, answers: list[Completion], drops: Counter) -> list[ParsedVerifier]:
    """Code-style function completions -> functions; a few-shot example's function given for
    another constraint is an echo of the prompt, not an answer."""
    examples = example_functions()
    own = normalize_instruction(instruction.text)
    out = []
    for a in answers:
        if a.finish_reason == "length":
            drops["truncated"] += 1
            continue
        try:
            code = parse_code_completion(a.text)
        except ParseError as exc:
            drops[exc.reason] += 1
            continue
        if examples.get(code_key(code), own) != own:
            drops["template_echo"] += 1
            continue
        out.append(ParsedVerifier(code=code))
    return out


def parse_case_answers(answers: list[Completion], drops: Counter, case_counts: Counter) -> list[ParsedVerifier]:
    out = []
    for a in answers:
        try:
            p = parse_case_answer(a.text)
        except ParseError as exc:
            drops["truncated" if a.finish_reason == "length" else exc.reason] += 1
            continue
        case_counts["kept"] += len(p.cases)
        case_counts["bad_case"] += p.bad_cases
        out.append(p)
    return out


def _seen(task: asyncio.Future) -> None:
    """A shared plain reply's failure reaches every instruction that awaits it; a run that stops
    (disk full, Ctrl-C) before any does must not print it as a stray task's traceback."""
    if not task.cancelled():
        task.exception()


class VerifierStage:
    """Instruction -> VerifierDraft (K functions and the cases pooled); dropped when no function
    or no case is left.

    `sampling`: the function request (its n is K, the functions per instruction); `style`:
    "code" or "json" (module docstring); `cases`: the code style's test-case request: for
    `case_style` "lists" n answers asking for `cases_per_side` passing and failing replies each;
    for "replies" one reply per query of the first n of `case_queries`, the i-th query's at the
    i-th of the temperatures `case_temperature_spread` spreads around the cases' temperature;
    `pairs`: the minimal-pair edits of every case (None: none are asked)."""

    name = "verifiers"

    @classmethod
    def from_config(cls, cfg: Config, queries: Sequence[Query] | None = None) -> VerifierStage:
        v = cfg.verifiers
        # an edit samples like a judge call: the likeliest small change, not a fresh reply
        pairs = (MinimalPairs(sampling=Sampling(1, cfg.backtranslate.judge_temperature, v.case_max_tokens),
                              max_change=v.minimal_pair_max_change) if v.minimal_pairs else None)
        return cls(sampling=Sampling(v.k, v.temperature, v.max_tokens), style=v.style,
                   cases=Sampling(v.case_samples, v.temperature, v.case_max_tokens),
                   cases_per_side=v.cases_per_side, case_style=v.case_style,
                   case_queries=run_queries(cfg, queries),
                   case_temperature_spread=v.case_temperature_spread, pairs=pairs)

    def __init__(self, *, sampling: Sampling, style: str = "code", cases: Sampling | None = None,
                 cases_per_side: int = 3, case_style: str = "lists",
                 case_queries: Sequence[Query] = (), case_temperature_spread: float = 0.0,
                 pairs: MinimalPairs | None = None) -> None:
        if style not in ("code", "json"):
            raise ValueError(f"verifier style {style!r}: expected 'code' or 'json'")
        if case_style not in ("replies", "lists"):
            raise ValueError(f"verifier case style {case_style!r}: expected 'replies' or 'lists'")
        self.sampling, self.style, self.cases_per_side = sampling, style, cases_per_side
        self.cases = cases or Sampling(2, sampling.temperature, 768)
        self.case_style = case_style
        self.case_queries = [q.text for q in case_queries][:self.cases.n]
        if case_style == "replies" and not self.case_queries:
            raise ValueError("verifier case style 'replies' needs queries to reply to")
        # A plain reply to a query does not depend on the instruction: asked once per run and
        # shared by every instruction's cases.
        self._plain: dict[str, asyncio.Future] = {}
        self._one_reply = [Sampling(1, t, self.cases.max_tokens)      # per case query
                           for t in spread_temperatures(self.cases.temperature, case_temperature_spread,
                                                        len(self.case_queries))]
        self.pairs = pairs

    async def process(self, item: Instruction, ctx: Context) -> list[VerifierDraft]:
        answer_drops: Counter[str] = Counter()
        case_counts: Counter[str] = Counter()
        pair_counts: Counter[str] = Counter()
        if self.style == "json":
            answers = await ask(ctx, render("verifier", instruction=item.text), self.sampling, role=CODER)
            parsed = parse_answers(((a.text, a.finish_reason) for a in answers), answer_drops, case_counts)
            drop_echoed_cases(parsed, example_cases("verifier"), case_counts)
            if self.pairs is not None:
                cases = [c for p in parsed for c in p.cases]
                for p in parsed:
                    p.cases = []
                parsed.append(ParsedVerifier(code="", cases=await self._paired(ctx, item, cases, pair_counts)))
        else:
            parsed = await self._code_style(item, ctx, answer_drops, case_counts, pair_counts)
        tally(ctx, f"{self.name}.answer", sum(1 for p in parsed if p.code), answer_drops)
        case_counts["kept"] -= case_counts["template_echo"]
        tally(ctx, f"{self.name}.case", case_counts["kept"],
              Counter(bad_case=case_counts["bad_case"], template_echo=case_counts["template_echo"]))
        if self.pairs is not None:
            tally(ctx, f"{self.name}.minimal_pair", pair_counts["made"],
                  Counter({r: pair_counts[r] for r in REJECT_REASONS}))
        if not any(p.code for p in parsed):
            ctx.funnel.drop(self.name, "no_parsable_answer")
            return []
        draft = pool_answers(item, parsed)
        if not draft.cases:
            ctx.funnel.drop(self.name, "no_cases")
            return []
        return [draft]

    async def _code_style(self, item: Instruction, ctx: Context, answer_drops: Counter,
                          case_counts: Counter, pair_counts: Counter) -> list[ParsedVerifier]:
        code_prompt = render("verifier_code", instruction=item.text)
        case_drops: Counter[str] = Counter()

        async def functions_parsed() -> list[ParsedVerifier]:
            # Parsed as soon as they arrive, while the cases are still generating: parsing every
            # instruction's functions only once the shared plain replies come back would put
            # all of that work (ast.parse x K x instructions) in front of cross-validation.
            return parse_functions(item, await complete(ctx, code_prompt, self.sampling, role=CODER, stop=CODE_STOPS),
                                   answer_drops)

        if self.case_style == "replies":
            functions, cases = await asyncio.gather(
                functions_parsed(), self._reply_cases(item, ctx, case_drops, case_counts, pair_counts))
            n_answers = 2 * len(self.case_queries) - sum(case_drops.values())
            cases = [cases]
        else:
            cases_prompt = render("verifier_cases", instruction=item.text, n=self.cases_per_side)

            async def cases_parsed() -> tuple[int, list[ParsedVerifier]]:
                answers = await ask(ctx, cases_prompt, self.cases, role=CODER,
                                    json_schema=cases_schema(self.cases_per_side))
                parsed = parse_case_answers(answers, case_drops, case_counts)
                drop_echoed_cases(parsed, example_cases("verifier_cases"), case_counts)
                if self.pairs is not None and parsed:
                    cases = await self._paired(ctx, item, [c for p in parsed for c in p.cases], pair_counts)
                    return len(parsed), [ParsedVerifier(code="", cases=cases)]
                return len(parsed), parsed

            functions, (n_answers, cases) = await asyncio.gather(functions_parsed(), cases_parsed())
        tally(ctx, f"{self.name}.case_answer", n_answers, case_drops)
        return functions + cases

    async def _reply_cases(self, item: Instruction, ctx: Context, drops: Counter, case_counts: Counter,
                           pair_counts: Counter) -> ParsedVerifier:
        """Cases of the "replies" style: per query, a reply told to obey the constraint
        (expected True; dropped when cut off by the token limit, since an unfinished reply
        says nothing about e.g. how it ends) and the shared plain reply (expected False).
        With minimal pairs each is edited as soon as it is back."""

        async def side(i: int, query: str, expected: bool) -> list[Case]:
            if expected:   # the pair of the plain reply (the responder's, see ask_plain): one model writes both sides
                prompt = render("case_follow", instruction=item.text, query=query)
                completions = await ask(ctx, prompt, self._one_reply[i], role=RESPONDER)
            else:
                completions = await asyncio.shield(self._plain_task(ctx, i))
            cases = []
            for c in completions:
                text = c.text.strip()
                if not text:
                    drops["empty"] += 1
                elif expected and c.finish_reason == "length":
                    drops["truncated"] += 1
                else:
                    cases.append(Case(input=text, expected=expected))
            case_counts["kept"] += len(cases)
            return await self._paired(ctx, item, cases, pair_counts)

        answers = await asyncio.gather(*(side(i, q, True) for i, q in enumerate(self.case_queries)),
                                       *(side(i, q, False) for i, q in enumerate(self.case_queries)))
        return ParsedVerifier(code="", cases=[c for cases in answers for c in cases])

    async def _paired(self, ctx: Context, item: Instruction, cases: list[Case], counts: Counter) -> list[Case]:
        """`cases` (distinct), each followed by its minimal-pair edit where one is made; `counts`:
        pairs made ("made") and edits rejected by reason."""
        cases = distinct_cases(cases)
        if self.pairs is None or not cases:
            return cases
        paired = await asyncio.gather(*(self.pairs.pair(ctx, item.text, c, counts) for c in cases))
        counts["made"] += sum(len(p) == 2 for p in paired)
        return [c for p in paired for c in p]

    def start(self, ctx: Context) -> None:
        """Before the first instruction: ask the shared plain replies. Every instruction's
        cross-validation waits for them; asked by the first instruction, they would queue (in
        the client's in-flight places, then at a first-come-first-served server) behind the
        function requests of every instruction started with it."""
        if self.style != "code" or self.case_style != "replies":
            return
        for i in range(len(self.case_queries)):
            self._plain_task(ctx, i)

    def _plain_task(self, ctx: Context, i: int) -> asyncio.Future:
        """The run's one request for the plain reply to the i-th case query (asked again only if
        it failed). Callers await it shielded: one instruction cancelled must not cancel the others'."""
        query = self.case_queries[i]
        task = self._plain.get(query)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = self._plain[query] = asyncio.ensure_future(ask_plain(ctx, query, self._one_reply[i]))
            task.add_done_callback(_seen)
        return task
