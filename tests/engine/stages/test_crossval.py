"""Cross-validation rules, each edge, on outcomes from the REAL sandbox pool."""
from collections import Counter

import pytest

from engine.config import Config
from engine.records import Case, Instruction, Verifier, VerifierDraft
from engine.stage import Context, Funnel
from engine.stages import CrossValStage, load_queries
from engine.stages.audit import probe_inputs
from engine.stages.crossval import judge
from sandbox_pool import Outcome
from tests.doubles import RecordingPool
from tests.engine.stages.conftest import on_module_loop

NO_COMMA = "def evaluate(response):\n    return ',' not in response\n"
NO_COMMA_COUNT = "def evaluate(response):\n    return response.count(',') == 0\n"
NO_COMMA_RE = "import re\n\ndef evaluate(response):\n    return re.search(',', response) is None\n"
NO_COMMA_COMMENTED = "def evaluate(response):\n    # commas are forbidden\n    return ',' not in response\n"
ALWAYS_TRUE = "def evaluate(response):\n    return True\n"
ALWAYS_FALSE = "def evaluate(response):\n    return False\n"
SHORT = "def evaluate(response):\n    return len(response) < 6\n"
RAISES = "def evaluate(response):\n    raise ValueError('boom')\n"
RETURNS_INT = "def evaluate(response):\n    return int(',' not in response)\n"
RETURNS_STR = "def evaluate(response):\n    return str(',' not in response)\n"
LOOPS = "def evaluate(response):\n    while True:\n        pass\n"
BAD_SYNTAX = "def evaluate(response) return True\n"
FORBIDDEN = "import os\ndef evaluate(response):\n    return True\n"

INSTRUCTION = Instruction("Do not use any commas in your reply.")


def draft(codes, cases):
    return VerifierDraft(INSTRUCTION, tuple(Verifier(c) for c in codes),
                         tuple(Case(i, e) for i, e in cases))


async def run_stage(pool, codes, cases, **cfg):
    # these tests pin the paper's rules; the two-sided rule (on by default) is tested by name
    cfg.setdefault("two_sided_cases", False)
    ctx = Context(llm=None, executor=RecordingPool(pool), funnel=Funnel())   # records this run's batches
    out = await CrossValStage.from_config(Config.from_flat(**cfg)).process(draft(codes, cases), ctx)
    return out, ctx


def codes_of(verified):
    return sorted(f.code for f, _ in verified.functions)


@on_module_loop
async def test_keeps_agreeing_functions_and_cases_in_one_batch(shared_pool):
    cases = [("a b c", True), ("a, b", False), ("no commas here", True), ("x,y", False)]
    codes = [NO_COMMA, NO_COMMA_COUNT, NO_COMMA_RE, ALWAYS_TRUE, NO_COMMA_COMMENTED, RETURNS_INT]
    out, ctx = await run_stage(shared_pool, codes, cases)
    pool: RecordingPool = ctx.executor
    assert len(pool.batches) == 1                                  # ALL functions x ALL cases at once
    assert len(pool.batches[0]) == 5                               # the commented copy was de-duplicated
    # the cases, then the audit's probes (same fork; they take no part in the judgement)
    probes = probe_inputs(INSTRUCTION, load_queries())
    assert all(inputs == [c for c, _ in cases] + probes for _, inputs in pool.batches[0])
    [v] = out
    assert dict(v.probe_verdicts)[Verifier(NO_COMMA).id] == (True,) * len(probes)  # no probe has a comma
    # 5 compiling functions: True cases get 4/5 agreeing, False cases 3/5 -> all four cases kept;
    # on them ALWAYS_TRUE is right 2/4 = 0.5 (not MORE than 0.5), RETURNS_INT never returns a bool
    assert len(v.cases) == 4
    assert codes_of(v) == sorted([NO_COMMA, NO_COMMA_COUNT, NO_COMMA_RE])
    assert all(acc == 1.0 for _, acc in v.functions)
    f = ctx.funnel.to_dict()
    assert f["crossval.function"] == {"in": 6, "kept": 3, "out": 3,
                                         "dropped": {"low_accuracy": 2, "duplicate": 1}}
    assert f["crossval.case"] == {"in": 4, "kept": 4, "out": 4, "dropped": {}}


@on_module_loop
async def test_accuracy_is_measured_on_kept_cases_only(shared_pool):
    # three compiling functions: False cases get 1/3 agreement and are dropped; on the kept (True)
    # cases ALWAYS_TRUE is perfect, so under the paper's rules alone it survives
    cases = [("a b c", True), ("a, b", False), ("no commas here", True), ("x,y", False)]
    out, ctx = await run_stage(shared_pool, [NO_COMMA, ALWAYS_TRUE, RETURNS_INT], cases)
    [v] = out
    assert [(c.input, c.expected) for c in v.cases] == [("a b c", True), ("no commas here", True)]
    assert codes_of(v) == sorted([NO_COMMA, ALWAYS_TRUE])
    assert ctx.funnel.to_dict()["crossval.case"]["dropped"] == {"low_agreement": 2}
    # with the two-sided rule (the default) such one-sided evidence keeps nothing
    out, ctx = await run_stage(shared_pool, [NO_COMMA, ALWAYS_TRUE, RETURNS_INT], cases, two_sided_cases=True)
    assert out == [] and ctx.funnel.to_dict()["crossval"]["dropped"] == {"one_sided": 1}


@on_module_loop
async def test_with_two_sided_cases_a_function_right_on_one_side_only_is_dropped(shared_pool):
    # One passing case and two failing ones are kept; `return False` is right on 2 of 3 (0.67,
    # above the paper's 0.5) without ever telling a passing reply from a failing one. A 0.5B
    # model's `words[0] == "Here is my answer:"` (never true) survived the demo this way.
    cases = [("a b c", True), ("a, b", False), ("x,y", False)]
    codes = [NO_COMMA, NO_COMMA_COUNT, NO_COMMA_RE, ALWAYS_FALSE]
    out, ctx = await run_stage(shared_pool, codes, cases)          # the paper's rules: kept
    assert ALWAYS_FALSE in codes_of(out[0])
    out, ctx = await run_stage(shared_pool, codes, cases, two_sided_cases=True)
    [v] = out
    assert len(v.cases) == 3 and codes_of(v) == sorted([NO_COMMA, NO_COMMA_COUNT, NO_COMMA_RE])
    assert ctx.funnel.to_dict()["crossval.function"]["dropped"] == {"one_sided_function": 1}


@on_module_loop
async def test_case_at_exactly_half_agreement_is_dropped(shared_pool):
    # two functions; on "a,b" they disagree (NO_COMMA: False, SHORT: True) -> 1/2 = 0.5 -> dropped
    cases = [("hi", True), ("a,b", False)]
    out, _ = await run_stage(shared_pool, [NO_COMMA, SHORT], cases)
    [v] = out
    assert [c.input for c in v.cases] == ["hi"]
    # lowering the bar below one half keeps it
    out, _ = await run_stage(shared_pool, [NO_COMMA, SHORT], cases, case_agreement=0.49)
    assert [c.input for c in out[0].cases] == ["hi", "a,b"]


@on_module_loop
async def test_function_at_exactly_half_accuracy_is_dropped(shared_pool):
    # three functions agree on all four cases except ALWAYS_TRUE, which is right on exactly 2 of 4
    cases = [("a b", True), ("c d", True), ("a, b", False), ("c, d", False)]
    out, _ = await run_stage(shared_pool, [NO_COMMA, RETURNS_INT.replace("int(", "bool("), ALWAYS_TRUE], cases)
    [v] = out
    assert ALWAYS_TRUE not in codes_of(v)
    assert len(v.functions) == 2 and all(acc == 1.0 for _, acc in v.functions)


@on_module_loop
async def test_no_cases_drops_without_running(shared_pool):
    out, ctx = await run_stage(shared_pool, [NO_COMMA], [])
    assert out == [] and ctx.funnel.to_dict()["crossval"]["dropped"] == {"no_cases": 1}
    assert ctx.executor.batches == []


@on_module_loop
async def test_all_functions_fail_at_run_time(shared_pool):
    out, ctx = await run_stage(shared_pool, [RAISES, LOOPS], [("a", True), ("a,b", False)])
    assert out == []
    assert ctx.funnel.to_dict()["crossval"]["dropped"] == {"no_case_agreed": 1}
    assert ctx.funnel.to_dict()["crossval.case"]["dropped"] == {"low_agreement": 2}


@on_module_loop
async def test_rejected_functions_do_not_compile(shared_pool):
    out, ctx = await run_stage(shared_pool, [BAD_SYNTAX, FORBIDDEN], [("a", True)])
    assert out == []
    f = ctx.funnel.to_dict()
    assert f["crossval"]["dropped"] == {"no_function_compiles": 1}
    assert f["crossval.function"]["dropped"] == {"not_compiling": 2}
    # a rejected function does not count in the agreement denominator
    out, _ = await run_stage(shared_pool, [BAD_SYNTAX, NO_COMMA], [("a", True), ("a,", False)])
    assert [(f.code, acc) for f, acc in out[0].functions] == [(NO_COMMA, 1.0)]
    assert len(out[0].cases) == 2


@on_module_loop
async def test_non_bool_returns_count_as_wrong(shared_pool):
    cases = [("a b", True), ("a, b", False)]
    out, _ = await run_stage(shared_pool, [RETURNS_INT, RETURNS_STR], cases)
    assert out == []                       # nobody returned a bool: no case can agree
    out, _ = await run_stage(shared_pool, [NO_COMMA, RETURNS_INT, RETURNS_STR], cases, case_agreement=0.3)
    assert codes_of(out[0]) == [NO_COMMA]


@on_module_loop
async def test_min_functions_and_cases_thresholds(shared_pool):
    cases = [("a b", True), ("a, b", False)]
    out, ctx = await run_stage(shared_pool, [NO_COMMA], cases, min_cases=3)
    assert out == [] and ctx.funnel.to_dict()["crossval"]["dropped"] == {"no_case_agreed": 1}
    out, ctx = await run_stage(shared_pool, [NO_COMMA], cases, min_functions=2)
    assert out == [] and ctx.funnel.to_dict()["crossval"]["dropped"] == {"no_function_accurate": 1}


def test_judge_rules_on_outcome_objects():
    ok = lambda v: Outcome("ok", v)          # noqa: E731
    fs = [Verifier(f"def evaluate(r):\n    return {i}\n") for i in range(3)]
    cases = [Case("x", True), Case("y", False)]
    results = [[ok(True), ok(False)],
               [ok(True), Outcome("timeout")],
               [Outcome("rejected"), Outcome("rejected")]]
    v = judge(fs, cases, results, 0.5, 0.5)
    # function 2 never compiled; case y has 1 of 2 agreeing (0.5) -> dropped
    assert [c.input for c in v.cases] == ["x"]
    assert [(f.id, acc) for f, acc in v.functions] == [(fs[0].id, 1.0), (fs[1].id, 1.0)]
    assert v.function_drops == Counter(not_compiling=1) and v.reason is None
    # the value must be a real bool: 1 and "True" do not count
    v = judge(fs[:1], cases[:1], [[ok(1)]], 0.5, 0.5)
    assert v.reason == "no_case_agreed"
    v = judge(fs[:1], cases[:1], [[ok("True")]], 0.5, 0.5)
    assert v.reason == "no_case_agreed"


@pytest.mark.parametrize("agreement, kept", [(0.66, 1), (0.67, 0)])
def test_judge_threshold_is_strict(agreement, kept):
    ok = lambda v: Outcome("ok", v)          # noqa: E731
    fs = [Verifier(f"def evaluate(r):\n    return {i}\n") for i in range(3)]
    results = [[ok(True)], [ok(True)], [ok(False)]]            # 2/3 agree
    v = judge(fs, [Case("x", True)], results, agreement, 0.5)
    assert len(v.cases) == kept
