"""Composition: families, conflict detection by execution (judge confirms, never adds), the
compose stage's groups, per-constraint grading and the export columns. Real pool, scripted LLM."""
from __future__ import annotations

import asyncio

import pytest

from engine.config import Config
from engine.export import ExportOptions, query_pairs, tables
from engine.families import FAMILIES, parse_family, rule_family
from engine.llm import Completion
from engine.records import (Case, ComposedInstruction, Instruction, Query, QueryResult, QueryTask, ResponseRecord,
                            VerifiedInstruction, Verifier)
from engine.stage import Context, Funnel
from engine.stages import ComposedGroups, ComposeStage, QueryJoinStage, default_stages
from engine.stages.base import Sampling
from engine.stages.compose import group_rates
from engine.stages.conflicts import ConflictCheck
from engine.stages.responses import ResponseStage
from tests.doubles import ScriptedLLM, real_pool

SHORT = "Answer in fewer than 5 words."
LONG = "Write at least 30 words."
LOWER = "Write your whole reply in lowercase letters."
HELLO = "Start your reply with the word Hello."


def vi(text: str, code: str, good: list[str], bad: list[str], family: str = "") -> VerifiedInstruction:
    return VerifiedInstruction(Instruction(text), ((Verifier(code), 1.0),),
                               tuple(Case(g, True) for g in good) + tuple(Case(b, False) for b in bad),
                               family=family)


def short() -> VerifiedInstruction:
    return vi(SHORT, "def evaluate(r):\n    return len(r.split()) < 5\n", ["yes indeed", "ok"],
              [" ".join(["word"] * 9)])


def long_() -> VerifiedInstruction:
    return vi(LONG, "def evaluate(r):\n    return len(r.split()) >= 30\n", [" ".join(["word"] * 31)], ["too short"])


def lower() -> VerifiedInstruction:
    return vi(LOWER, "def evaluate(r):\n    return r == r.lower()\n", ["all lower here"], ["Not Lower"])


def hello() -> VerifiedInstruction:
    return vi(HELLO, "def evaluate(r):\n    return r.startswith('Hello')\n", ["Hello there, friend"], ["Hi there"])


def judge(verdict: str):
    def script(name, prompt, n):
        if name == "conflict":
            return [f"Thinking.\n{verdict}"]
        if name == "family":
            return ["content/other"]
        return ["ok"] * n
    return ScriptedLLM(script)


def with_pool(fn):
    """fn(pool) awaited with a started real pool."""
    async def go():
        async with real_pool() as pool:
            return await fn(pool)
    return asyncio.run(go())


def ctx(llm, pool) -> Context:
    return Context(llm=llm, executor=pool, funnel=Funnel())


def check() -> ConflictCheck:
    return ConflictCheck(pass_threshold=0.5, judge=Sampling(1, 0.0, 64))


def test_families_by_rule_and_judge_answer():
    assert rule_family(SHORT) == "length"
    assert rule_family(LOWER) == "case"
    assert rule_family(HELLO) == "start/end"
    assert rule_family("Do not use any commas in your reply.") == "punctuation"
    assert rule_family("Answer in French.") == "language"
    assert rule_family("Format your answer as a bulleted list.") == "format/structure"
    assert rule_family("Include the keyword banana.") == "keywords"
    assert rule_family("Be polite to the user.") is None
    assert parse_family("It limits how it opens.\nstart/end") == "start/end"
    assert parse_family("Kind: Length") == "length"
    assert parse_family("no idea") == "content/other" and "content/other" in FAMILIES


def test_conflicting_pair_is_confirmed_by_the_judge():
    llm = judge("conflict")
    c = ctx(llm, None)

    async def go(pool):
        c.executor = pool
        return await check().check(short(), long_(), c)
    found = with_pool(go)
    assert found is not None and {found.a_text, found.b_text} == {SHORT, LONG}
    assert llm.count("conflict") == 1
    assert c.funnel.to_dict()["compose.pair"]["dropped"] == {"conflict": 1}


def test_judge_alone_never_adds_a_pair():
    # a text meets both in the sandbox, so the judge is not even asked, whatever it would say
    llm = judge("conflict")
    a = vi(LOWER, "def evaluate(r):\n    return r == r.lower()\n", ["all lower here"], ["Not Lower"])
    b = vi("Include the word tea.", "def evaluate(r):\n    return 'tea' in r\n", ["i like tea"], ["coffee"])
    assert with_pool(lambda pool: check().check(a, b, ctx(llm, pool))) is None
    assert llm.count("conflict") == 0


def test_suspect_pair_the_judge_clears_is_compatible():
    llm = judge("compatible")
    assert with_pool(lambda pool: check().check(short(), long_(), ctx(llm, pool))) is None
    assert llm.count("conflict") == 1


def test_group_rates_follow_the_mix():
    assert group_rates((0.4, 0.3, 0.2, 0.1), 4) == pytest.approx({2: 0.75, 3: 0.5, 4: 0.25})
    assert group_rates((0.5, 0.5), 3) == pytest.approx({2: 0.5, 3: 0.5})


def compose_stage(on_conflict=None) -> ComposeStage:
    return ComposeStage(shares=(0.2, 0.8), max_n=2, seed=0, checker=check(), family_judge=Sampling(1, 0.0, 64),
                        on_conflict=on_conflict)


def run_compose(stage, items, llm):
    c = ctx(llm, None)

    async def go(pool):
        c.executor = pool
        out = []
        for it in items:
            out += await stage.process(it, c)
        return out
    return with_pool(go), c


def test_conflicting_pair_is_never_composed_and_a_compatible_one_is():
    conflicts = []
    stage = compose_stage(conflicts.append)
    out, c = run_compose(stage, [short(), long_(), lower()], judge("conflict"))
    singles = [o for o in out if isinstance(o, VerifiedInstruction)]
    groups = [o for o in out if isinstance(o, ComposedInstruction)]
    assert [s.family for s in singles] == ["length", "length", "case"]
    assert groups, "a compatible pair of two families is composed"
    for g in groups:
        texts = {m.instruction.text for m in g.members}
        assert not {SHORT, LONG} <= texts
        assert len({m.family for m in g.members}) == len(g.members)
    # SHORT and LONG are the same family, so never even a candidate pair; LOWER vs each is checked
    assert c.funnel.to_dict()["compose.pair"]["in"] == 2


def test_conflict_across_families_blocks_the_pair():
    conflicts = []
    stage = compose_stage(conflicts.append)
    shouting = vi("Write your whole reply in capital letters.", "def evaluate(r):\n    return r == r.upper()\n",
                  ["ALL CAPS"], ["not caps"])
    start_lower = vi("Start your reply with the word hello.", "def evaluate(r):\n    return r.startswith('hello')\n",
                     ["hello friend"], ["Hi"])
    out, c = run_compose(stage, [shouting, start_lower], judge("conflict"))
    assert len(conflicts) == 1
    assert not [o for o in out if isinstance(o, ComposedInstruction)]
    assert c.funnel.to_dict()["compose.pair"]["dropped"] == {"conflict": 1}


def test_composition_is_seeded_by_ids():
    a = run_groups([short(), lower(), hello()])
    b = run_groups([short(), lower(), hello()])
    assert a == b and a


def test_groups_do_not_depend_on_arrival_order_or_concurrency():
    """Through the runner, as a run composes: the stage waits for every instruction, so the
    order cross-validation happens to finish them in changes nothing."""
    from engine.runner import StageSpec, StreamRunner

    def groups_when(items, concurrency):
        out = []

        async def go(pool):
            runner = StreamRunner([StageSpec(compose_stage(), concurrency)], ctx(judge("compatible"), pool),
                                  sink=out.append)
            await runner.run(items)
        with_pool(go)
        return [[m.instruction.id for m in o.members] for o in out if isinstance(o, ComposedInstruction)]

    items = [short(), lower(), hello(), long_()]
    first = groups_when(items, 1)
    assert first, "some pair is composed"
    assert groups_when(items[::-1], 4) == first
    assert groups_when(items[1:] + items[:1], 2) == first


def test_a_resumed_stage_makes_the_same_groups_and_records_none_twice():
    memory = ComposedGroups()
    items = sorted([short(), lower(), hello()], key=lambda v: v.instruction.id)   # the runner's order
    stage = ComposeStage(shares=(0.2, 0.8), max_n=2, seed=0, checker=check(), groups=memory)
    first, _ = run_compose(stage, items, judge("compatible"))
    made = [[m.instruction.id for m in o.members] for o in first if isinstance(o, ComposedInstruction)]
    assert made and memory.groups == made
    recorded = []
    again = ComposeStage(shares=(0.2, 0.8), max_n=2, seed=0, checker=check(),
                         groups=ComposedGroups(made, on_change=recorded.append))
    second, _ = run_compose(again, items, judge("compatible"))
    assert [[m.instruction.id for m in o.members] for o in second if isinstance(o, ComposedInstruction)] == made
    assert recorded == [] and again.groups.groups == made


def run_groups(items):
    out, _ = run_compose(compose_stage(), items, judge("compatible"))
    return [[m.instruction.id for m in o.members] for o in out if isinstance(o, ComposedInstruction)]


def test_composed_task_is_graded_per_constraint_and_exported():
    group = ComposedInstruction((lower(), hello()))
    [task] = asyncio.run(QueryJoinStage([Query("Say hi.")], per_instruction=1, seed=0).process(group, ctx(None, None)))
    assert task.also and task.instruction_ids == [lower().instruction.id, hello().instruction.id]
    assert LOWER in task.prompt and HELLO in task.prompt
    answers = ["hello all lower", "Hello Mixed Case", "Nope Not", "Hello there"]
    llm = ScriptedLLM(lambda name, prompt, n: answers[:n])
    graded = []
    stage = ResponseStage(sampling=Sampling(4, 0.0, 64), pass_threshold=0.5, on_graded=graded.append)
    assert with_pool(lambda pool: stage.process(task, ctx(llm, pool))) == []     # none met both
    [result] = graded
    rs = result.responses
    assert [r.verdicts for r in rs] == [(True, False), (False, True), (False, False), (False, True)]
    assert not any(r.passed for r in rs)
    fixed = QueryResult(task, (ResponseRecord("hello there", 1.0, (), True, verdicts=(True, True)),
                               rs[2], rs[1]), "m")
    [pair] = query_pairs([fixed], ExportOptions())
    assert pair.chosen == "hello there" and pair.rejected == "Hello Mixed Case"   # misses exactly one
    opts = ExportOptions(composed=True, parquet=False)
    for table in tables([lower(), hello()], [fixed], opts):
        for row in table.rows:
            assert row["n_constraints"] == len(row["instruction_ids"]) >= 1
    sft = next(t for t in tables([lower()], [fixed], opts) if t.stem == "sft_trl").rows
    assert sft[0]["n_constraints"] == 2


def test_compose_off_leaves_the_chain_and_hash_alone():
    cfg = Config()
    assert "compose" not in [s.name for s in default_stages(cfg, [], [Query("q")])]
    on = cfg.replace_flat(compose=True)
    names = [s.name for s in default_stages(on, [], [Query("q")])]
    assert names[names.index("audit") + 1] == "compose"
    assert cfg.config_hash() != on.config_hash()
    with pytest.raises(Exception, match="compose-mix"):
        Config.from_flat(compose_mix="0,1")


def test_composed_records_round_trip_and_keep_single_ids():
    a = VerifiedInstruction(lower().instruction, lower().functions, lower().cases)
    assert lower().id == a.id and VerifiedInstruction.from_dict(lower().to_dict()) == lower()
    assert "family" not in a.to_dict()
    b = vi(HELLO, "def evaluate(r):\n    return r.startswith('Hello')\n", ["Hello there, friend"], ["Hi there"],
           family="start/end")
    assert VerifiedInstruction.from_dict(b.to_dict()).family == "start/end"
    single = QueryTask(a, "q1", "Say hi.", "Say hi.\n\n" + LOWER)
    assert "also_ids" not in single.to_dict() and single.instruction_ids == [a.instruction.id]
    both = QueryTask(a, "q1", "Say hi.", "p", also=(b,))
    assert both.id != single.id
    known = {a.id: a, b.id: b}
    back = QueryTask.from_dict(both.to_dict(), known)
    assert back == both and back.id == both.id
    r = ResponseRecord("hello", 0.5, (), False, verdicts=(True, False))
    assert ResponseRecord.from_dict(r.to_dict()) == r
    assert "verdicts" not in ResponseRecord("x", 1.0).to_dict()


def test_sim_demo_composes_exports_one_schema_per_file_and_resumes_the_same(tmp_path):
    """`autoif run --backend sim --demo --compose`: composed SFT rows whose prompts state each of
    their constraints, from different families; every row of every file names its constraints;
    the conflict list is written; the same command again leaves every file as it was."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import orjson

    root = Path(__file__).resolve().parents[3]
    out = tmp_path / "demo"
    # --sim-speed 0: the simulator answers at once; the exports do not depend on its pace
    cmd = [sys.executable, "-m", "engine.cli", "run", "--backend", "sim", "--sim-speed", "0", "--demo", "--compose",
           "--max-queries", "80", "--output-dir", str(out), "--no-progress", "--no-parquet"]

    def run() -> dict[str, bytes]:
        proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": str(root)})
        assert proc.returncode == 0, proc.stderr[-3000:]
        return {p.name: p.read_bytes() for p in sorted((out / "exports").glob("*.jsonl"))}

    first = run()
    assert "conflicts.jsonl" in first
    rows = {name: [orjson.loads(line) for line in data.splitlines()] for name, data in first.items()}
    for name, table in rows.items():
        if name == "conflicts.jsonl":
            continue
        assert table and all(len(r["instruction_ids"]) == r["n_constraints"] >= 1 for r in table), name
        assert len({tuple(sorted(r)) for r in table}) == 1, name             # one schema per file
    verifiers = {r["instruction_id"]: r for r in rows["verifiers.jsonl"]}
    composed = [r for r in rows["sft_trl.jsonl"] if r["n_constraints"] >= 2]
    assert composed
    for r in composed:
        prompt = r["messages"][0]["content"]
        members = [verifiers[i] for i in r["instruction_ids"]]
        assert all(m["instruction"] in prompt for m in members)
        assert len({m["family"] for m in members}) == len(members)
    summary = orjson.loads((out / "summary.json").read_bytes())
    by_size = summary["compose"]["results_by_constraints"]
    assert sum(n for k, n in by_size.items() if int(k) >= 2) >= len(composed)
    assert any(k.startswith("compose.family.") for k in summary["funnel"]) and "compose.pair" in summary["funnel"]
    assert run() == first


def test_query_cap_is_shared_by_constraint_count():
    from engine.stages import QueryBudget
    queries = [Query(f"q{i}") for i in range(10)]
    budget = QueryBudget(20)
    stage = QueryJoinStage(queries, per_instruction=10, seed=0, budget=budget, shares=(0.5, 0.25, 0.25))
    c = ctx(None, None)

    def joined(item):
        return len(asyncio.run(stage.process(item, c)))
    # one-constraint prompts come first but take only their half of the cap
    assert [joined(lower()), joined(hello())] == [10, 0]
    assert joined(ComposedInstruction((lower(), hello()))) == 5
    assert joined(ComposedInstruction((short(), lower(), hello()))) == 5
    assert joined(ComposedInstruction((hello(), short()))) == 0
    assert sum(budget.grants.values()) == 20
    # without shares (composition off) the first take what they want, as before
    plain = QueryJoinStage(queries, per_instruction=10, seed=0, budget=QueryBudget(20))
    assert [len(asyncio.run(plain.process(i, c))) for i in (lower(), hello(), short())] == [10, 10, 0]


def test_the_llm_places_what_the_rules_do_not():
    polite = vi("Be polite to the user.", "def evaluate(r):\n    return True\n", ["ok"], [])
    llm = ScriptedLLM(lambda name, prompt, n: ["It is about which words appear.\nkeywords"] if name == "family" else [])
    assert asyncio.run(compose_stage().family(polite, ctx(llm, None))) == "keywords"
    assert asyncio.run(compose_stage().family(lower(), ctx(llm, None))) == "case"     # rules first: no call
    assert llm.count("family") == 1
    no_llm = ComposeStage(shares=(0.5, 0.5), max_n=2, seed=0, checker=check(), family_judge=None)
    assert asyncio.run(no_llm.family(polite, ctx(llm, None))) == "content/other"


def test_a_recorded_stage_keeps_its_barrier():
    """A run records the compose stage's outputs through a wrapper; the runner must still see
    the stage's `hold`, or composition would follow arrival order."""
    from engine.run.record import Recorded

    class NoBarrier:
        name = "plain"

        async def process(self, item, ctx):
            return [item]

    stage = compose_stage()
    wrapped = Recorded(stage, lambda outs: None)
    item = short()
    assert wrapped.hold(item) == stage.hold(item) == item.instruction.id
    assert not hasattr(Recorded(NoBarrier(), print), "hold")
