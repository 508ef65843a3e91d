"""Template echoes and one-sided evidence are dropped: the code-style verifier requests, their
parsing, and the two-sided rule of cross-validation (scripted LLM, REAL sandbox pool)."""
import orjson
import pytest

from engine.config import Config
from engine.llm import Completion
from engine.parsing import (ParseError, parse_case_answer, parse_code_completion,
                            parse_verifier_answer)
from engine.records import Case, Instruction, Query
from engine.stage import Context, Funnel
from engine.stages import VerifierStage
from engine.stages.verifiers import CODE_STOPS
from tests.engine.stages.test_crossval import ALWAYS_TRUE, NO_COMMA, NO_COMMA_COUNT, run_stage
from tests.doubles import ScriptedLLM
from tests.engine.stages.conftest import on_module_loop

HEADER = "def evaluate(response: str) -> bool:\n"


def test_completion_body_ends_at_the_first_unindented_line():
    text = "\n    return ',' not in response\n\n# Constraint: next one\ndef evaluate(x):\n    return 1\n"
    assert parse_code_completion(text) == HEADER + "    return ',' not in response\n"
    multi = "    words = response.split()\n\n    return len(words) < 9\nprint(evaluate('a'))"
    assert parse_code_completion(multi) == HEADER + "    words = response.split()\n\n    return len(words) < 9\n"


@pytest.mark.parametrize("text,reason", [
    ("    ...", "template_echo"),
    ("    pass\n", "template_echo"),
    ('    """Checks the reply."""\n    ...\n', "template_echo"),
    ("Here is the function you asked for.", "no_body"),
    ("\n\n", "no_body"),
])
def test_placeholder_and_empty_bodies_are_refused(text, reason):
    with pytest.raises(ParseError) as err:
        parse_code_completion(text)
    assert err.value.reason == reason


def test_reference_json_answer_with_a_placeholder_body_is_an_echo():
    skeleton = '{"func": "def evaluate(response: str) -> bool:\\n    ...", "cases": [{"input": "x", "output": true}]}'
    with pytest.raises(ParseError) as err:
        parse_verifier_answer(skeleton)
    assert err.value.reason == "template_echo"
    real = '{"func": "def evaluate(response: str) -> bool:\\n    return \'...\' in response", "cases": []}'
    assert "'...' in response" in parse_verifier_answer(real).code      # an ellipsis in a string is fine


def test_case_answer_forms():
    p = parse_case_answer('{"follow": ["a b", "c d"], "break": ["a, b", 3]}')
    assert [(c.input, c.expected) for c in p.cases] == [("a b", True), ("c d", True), ("a, b", False)]
    assert p.bad_cases == 1
    p = parse_case_answer('[{"input": "x", "output": false}]')
    assert [(c.input, c.expected) for c in p.cases] == [("x", False)]
    with pytest.raises(ParseError):
        parse_case_answer("no json here")


CONSTRAINT = "Do not use any commas in your reply."
FUNCTIONS = [
    Completion(text="\n    return ',' not in response\n"),                 # sound
    Completion(text="\n    return response.count(',') == 0"),              # sound, another way
    Completion(text="\n    ..."),                                           # skeleton
    Completion(text='\n    return ";" not in response\n'),                  # a few-shot example's body
    Completion(text="\n    return len(response.split(", finish_reason="length"),
]
CASES = [
    Completion(text=orjson.dumps({"follow": ["no commas at all", "plain words here"],
                                  "break": ["one, two", "break"]}).decode()),
    # the prompt's own words, copied: an echo, not a test case
    Completion(text=orjson.dumps({"follow": ["follow"], "break": ["x, y"]}).decode()),
    Completion(text='{"follow": ["cut off', finish_reason="length"),
]


async def test_code_style_requests_and_echo_drops():
    llm = ScriptedLLM(lambda name, prompt, n: FUNCTIONS[:n] if name == "verifier_code" else CASES[:n])
    ctx = Context(llm=llm, executor=None, funnel=Funnel())
    stage = VerifierStage.from_config(Config.from_flat(verifier_k=5, verifier_case_samples=3, verifier_cases_per_side=2,
                                                          verifier_case_style="lists"))
    [draft] = await stage.process(Instruction(CONSTRAINT), ctx)
    by_name = {c[0]: c for c in llm.calls}
    assert sorted(by_name) == ["verifier_cases", "verifier_code"]
    name, prompt, n, params = by_name["verifier_code"]
    assert n == 5 and params.stop == CODE_STOPS
    assert prompt.endswith(f"# Constraint: {CONSTRAINT}\ndef evaluate(response: str) -> bool:")
    _, prompt, n, params = by_name["verifier_cases"]
    schema = orjson.loads(params.json_schema)
    assert n == 3 and schema["required"] == ["follow", "break"]
    assert schema["properties"]["follow"]["maxItems"] == 2
    assert [f.code for f in draft.functions] == [HEADER + "    return ',' not in response\n",
                                                 HEADER + "    return response.count(',') == 0\n"]
    assert [(c.input, c.expected) for c in draft.cases] == [
        ("no commas at all", True), ("plain words here", True), ("one, two", False), ("x, y", False)]
    f = ctx.funnel.to_dict()
    assert f["verifiers.answer"]["kept"] == 2
    assert f["verifiers.answer"]["dropped"] == {"template_echo": 2, "truncated": 1}
    assert f["verifiers.case_answer"]["dropped"] == {"truncated": 1}
    # both copied prompt strings go
    assert f["verifiers.case"]["dropped"] == {"template_echo": 2}
    # what summary.json reports as the truncation rate of each row
    assert ctx.funnel.truncation() == {"verifiers.answer": 0.2, "verifiers.case_answer": 0.3333}


async def test_own_example_constraint_may_reuse_its_example_body():
    llm = ScriptedLLM(lambda name, prompt, n: [Completion(text='\n    return ";" not in response')] * n
                      if name == "verifier_code" else [CASES[0]] * n)
    ctx = Context(llm=llm, executor=None, funnel=Funnel())
    stage = VerifierStage.from_config(Config.from_flat(verifier_k=1, verifier_case_samples=1, verifier_case_style="lists"))
    [draft] = await stage.process(Instruction("Never use a semicolon."), ctx)
    assert len(draft.functions) == 1


async def test_reply_cases_follow_side_is_told_the_rule_and_plain_side_is_shared():
    # "replies" case style: per query a reply told to obey (expected True; cut off: dropped) and
    # a plain reply (expected False), asked once per run whatever the number of instructions.
    def script(name, prompt, n):
        if name == "verifier_code":
            return FUNCTIONS[:2]
        if name == "case_follow":
            if "basil" in prompt:
                return [Completion(text="water it and give it sun", finish_reason="length")]
            return [Completion(text=" no commas in this reply ")]
        return [Completion(text="Sure, here it is, with commas.")]
    llm = ScriptedLLM(script)
    ctx = Context(llm=llm, executor=None, funnel=Funnel())
    queries = [Query("How do I keep basil alive?"), Query("Name a bakery."), Query("unused")]
    stage = VerifierStage.from_config(Config.from_flat(verifier_k=2, verifier_case_samples=2), queries)
    [a], [b] = [await stage.process(Instruction(c), ctx) for c in (CONSTRAINT, "Use no commas at all.")]
    follow = [c for c in llm.calls if c[0] == "case_follow"]
    assert len(follow) == 4 and llm.count("case_plain") == 2          # plain replies shared
    assert all(c[2] == 1 for c in follow) and "Rule: Use no commas at all." in follow[-1][1]
    assert "Message: Name a bakery." in follow[1][1] and not any("unused" in c[1] for c in llm.calls)
    for draft in (a, b):
        assert [(c.input, c.expected) for c in draft.cases] == [
            ("no commas in this reply", True), ("Sure, here it is, with commas.", False)]
    f = ctx.funnel.to_dict()
    assert f["verifiers.case_answer"]["kept"] == 6 and f["verifiers.case_answer"]["dropped"] == {"truncated": 2}
    assert f["verifiers.case"]["kept"] == 6   # read per instruction; pooling then merges equal texts


@on_module_loop
async def test_one_sided_cases_are_no_evidence(shared_pool):
    # every case expects True: even an always-True function "agrees" with all of them
    cases = [("a b", True), ("c d", True)]
    out, ctx = await run_stage(shared_pool, [NO_COMMA, ALWAYS_TRUE], cases, two_sided_cases=True)
    assert out == []
    f = ctx.funnel.to_dict()
    assert f["crossval"]["dropped"] == {"one_sided": 1}
    assert f["crossval.function"]["dropped"] == {"one_sided_cases": 2}
    # configurable: off, the paper's rules alone keep it
    out, _ = await run_stage(shared_pool, [NO_COMMA, ALWAYS_TRUE], cases, two_sided_cases=False)
    assert len(out) == 1 and len(out[0].functions) == 2
    # with both sides the constant function is caught by the accuracy rule
    out, _ = await run_stage(shared_pool, [NO_COMMA, NO_COMMA_COUNT, ALWAYS_TRUE], cases + [("a, b", False), ("c, d", False)],
                             two_sided_cases=True)
    assert [f.code for f, _ in out[0].functions] == [NO_COMMA, NO_COMMA_COUNT]
    assert {(c.input, c.expected) for c in out[0].cases} == {*cases, ("a, b", False), ("c, d", False)}
    assert all(isinstance(c, Case) for c in out[0].cases)


async def test_the_shared_plain_replies_are_asked_before_any_instruction_request():
    """Every instruction's cross-validation waits for the plain replies, so the runner's start
    hook sends them first: a first-come-first-served server then answers them first."""
    from engine.runner import StreamRunner

    def script(name, prompt, n):
        if name == "verifier_code":
            return FUNCTIONS[:2]
        return [Completion(text="no commas in this reply" if name == "case_follow" else "Sure, with commas.")]
    llm = ScriptedLLM(script)
    ctx = Context(llm=llm, executor=None, funnel=Funnel())
    stage = VerifierStage.from_config(Config.from_flat(verifier_k=2, verifier_case_samples=2),
                                      [Query("Name a bakery."), Query("Name a river.")])
    drafts = []
    await StreamRunner([stage], ctx, sink=drafts.append).run(
        [Instruction(f"Use no commas, variant {i}.") for i in range(6)])
    assert len(drafts) == 6
    assert [c[0] for c in llm.calls[:2]] == ["case_plain", "case_plain"], [c[0] for c in llm.calls[:4]]
    assert llm.count("case_plain") == 2 and llm.count("verifier_code") == 6


async def test_a_plain_reply_nobody_awaited_fails_silently():
    """A run that stops (disk full) before any instruction awaits the shared plain replies
    closes its client under them: their failure is no stray traceback on the way out."""
    import asyncio
    import gc

    def script(name, prompt, n):
        raise RuntimeError("Session is closed")
    reported = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        stage = VerifierStage.from_config(Config.from_flat(verifier_k=2, verifier_case_samples=2),
                                          [Query("Name a bakery."), Query("Name a river.")])
        stage.start(Context(llm=ScriptedLLM(script), executor=None, funnel=Funnel()))
        tasks = list(stage._plain.values())
        await asyncio.wait(tasks)
        assert len(tasks) == 2 and not any(t.cancelled() for t in tasks)
        del stage, tasks
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    assert not [c for c in reported if "never retrieved" in c.get("message", "")], reported
