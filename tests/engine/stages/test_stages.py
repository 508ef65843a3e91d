"""Each stage on its own, with a scripted in-process LLM and the REAL sandbox pool."""
import asyncio
import re

import orjson
import pytest

from engine.config import Config
from engine.llm import Completion
from engine.records import (Case, FunctionResult, Instruction, Query, QueryResult, QueryTask, ResponseRecord,
                            Verifier, VerifiedInstruction)
from engine.stage import Context, Funnel
from engine.stages import (CHAIN, QueryJoinStage, default_stages, load_queries, load_seed_instructions,
                           make_seed_batches)
from tests.doubles import RecordingPool, ScriptedLLM, real_pool
from tests.engine.stages.conftest import on_module_loop

NO_COMMA = "def evaluate(response):\n    return ',' not in response\n"
LOWER = "def evaluate(response):\n    return response == response.lower()\n"
RAISES = "def evaluate(response):\n    raise RuntimeError('no')\n"


def make_ctx(llm=None, executor=None) -> Context:
    return Context(llm=llm, executor=executor, funnel=Funnel())


def make(name, seeds=(), queries=None, **cfg):
    """The stage `name` as a run builds it, with these Config settings."""
    return default_stages(Config.from_flat(**cfg), seeds, queries, names=(name,))[0]


def line_after(prompt: str, label: str) -> str:
    return re.search(rf"^{label}: (.*)$", prompt, re.M).group(1)


# ---------------------------------------------------------------- augment

SEEDS = [Instruction(t) for t in ("Do not use any commas in your reply.",
                                  "Write your entire reply in lowercase letters.",
                                  "Answer in fewer than 50 words.",
                                  "Include exactly 3 bullet points in markdown.")]


def test_builtin_seeds_and_batches():
    seeds = load_seed_instructions()
    assert len(seeds) >= 40 and len({s.id for s in seeds}) == len(seeds)
    batches = make_seed_batches(seeds, batches=5, shown=8, seed=1)
    assert sorted(s.id for b in batches for s in b.passthrough) == sorted(s.id for s in seeds)
    assert all(len(b.shown) == 8 for b in batches)
    assert [b.id for b in batches] == [b.id for b in make_seed_batches(seeds, 5, 8, seed=1)]
    assert [b.id for b in batches] != [b.id for b in make_seed_batches(seeds, 5, 8, seed=2)]
    [only] = make_seed_batches(seeds, batches=0, shown=8)
    assert only.shown == () and len(only.passthrough) == len(seeds)


def test_seed_file_errors_name_file_and_line(tmp_path):
    path = tmp_path / "seeds.jsonl"
    path.write_text('{"instruction": "Use no commas at all."}\nnot json\n{"other": 1}\n{"text": "End with the word fin."}\n')
    with pytest.raises(ValueError, match=r"seeds\.jsonl:2:"):
        load_seed_instructions(path)
    errors = []
    seeds = load_seed_instructions(path, on_error=errors.append)
    assert [s.text for s in seeds] == ["Use no commas at all.", "End with the word fin."]
    assert [e.split(": ")[0].rsplit(":", 1)[1] for e in errors] == ["2", "3"]


async def test_augment_dedups_filters_and_passes_seeds_through():
    proposals = ("Here are some:\n"
                 "1. End your reply with the word goodbye.\n"
                 "2. Do not use any commas in your reply!\n"               # exact duplicate of a seed
                 "3. Write your entire reply in lowercase letters only.\n"  # near-duplicate of a seed
                 "4. Be kind and thoughtful to the user.\n"                 # judged not checkable
                 "5. Use the word lantern exactly twice.\n")                # judge answer unreadable

    def script(name, prompt, n):
        if name == "augment":
            return [proposals] * n
        assert name == "checkable"
        inst = line_after(prompt, "Constraint")
        return ["Counting is easy.\nYES" if "goodbye" in inst else "NO" if "kind" in inst else "Hmm."]

    llm = ScriptedLLM(script)
    ctx = make_ctx(llm)
    stage = make("augment", SEEDS, augment_samples=2, augment_per_prompt=7)
    batches = make_seed_batches(SEEDS, batches=2, shown=3)
    outs = [await stage.process(b, ctx) for b in batches]
    texts = [i.text for out in outs for i in out]
    assert sorted(texts) == sorted([s.text for s in SEEDS] + ["End your reply with the word goodbye."])
    new = [i for out in outs for i in out if i.source == "augment"]
    assert len(new) == 1 and new[0].text.endswith("goodbye.")
    # one augment request per batch with n samples, showing that batch's seeds
    aug_calls = [c for c in llm.calls if c[0] == "augment"]
    assert [c[2] for c in aug_calls] == [2, 2]
    for (_, prompt, _, _), batch in zip(aug_calls, batches):
        assert all(s.text in prompt for s in batch.shown) and "Write 7 new constraints" in prompt
    cand = ctx.funnel.to_dict()["augment.candidate"]
    # batch 1: 2 answers x 5 items = 10 candidates; batch 2 sees the same 10 again
    assert cand["in"] == 20 and cand["kept"] == 1
    # item 3 is never indexed, so it is a near-duplicate each of the 4 times it comes;
    # everything else seen before is an exact duplicate
    assert cand["dropped"] == {"duplicate": 13, "near_duplicate": 4, "not_checkable": 1,
                               "unparsable_checkable": 1}


async def test_augment_keeps_at_most_the_count_it_asked_for_from_each_answer():
    # A small model asked for 3 listed 9; each extra instruction costs a run K verifiers and all
    # its queries, so the list is cut where the prompt said.
    asks = ["End your reply with the word goodbye.", "Write entirely in capital letters.",
            "Use no more than three sentences.", "Include the keyword harbor twice.",
            "Wrap the whole reply in double quotes.", "Put a title in double angle brackets.",
            "Do not use the letter z anywhere.", "Number every paragraph.", "Avoid all exclamation marks."]
    listed = "\n".join(f"{i}. {t}" for i, t in enumerate(asks, 1))
    llm = ScriptedLLM(lambda name, prompt, n: [listed] * n)
    ctx = make_ctx(llm)
    stage = make("augment", SEEDS, augment_per_prompt=3, checkable_filter=False)
    out = await stage.process(make_seed_batches(SEEDS, 1, 2)[0], ctx)
    assert [i.text for i in out if i.source == "augment"] == asks[:3]
    assert ctx.funnel.to_dict()["augment.candidate"]["dropped"] == {"beyond_count": 6}


async def test_augment_list_style_continues_the_seed_list_as_raw_text():
    # The seeds shown become items 1-3 of a numbered list; the model writes "4." onwards and the
    # request stops where item 4 + per_prompt would begin.
    def script(name, prompt, n):
        assert name == "augment_list" and prompt.endswith("\n4."), prompt
        return [" Use the word harbor exactly twice.\n5. Write entirely in capital letters."] * n

    llm = ScriptedLLM(script)
    ctx = make_ctx(llm)
    stage = make("augment", SEEDS, augment_style="list", augment_per_prompt=2, checkable_filter=False)
    out = await stage.process(make_seed_batches(SEEDS, 1, 3)[0], ctx)
    assert [i.text for i in out if i.source == "augment"] == [
        "Use the word harbor exactly twice.", "Write entirely in capital letters."]
    (_, prompt, n, params), = llm.calls
    assert params.stop == ("\n6.", "\n\n") and n == 1
    assert sum(s.text in prompt for s in SEEDS) == 3  # the batch's shown seeds, numbered 1-3
    assert ctx.funnel.to_dict()["augment.candidate"] == {"in": 2, "kept": 2, "out": 2, "dropped": {}}


async def test_augment_samples_more_answers_but_keeps_at_most_max_new_per_prompt():
    # Two samples of the list: the judge rejects one proposal and the second sample repeats
    # one; of the three left, the first two in answer order are kept.
    answers = [" Use the word harbor exactly twice.\n5. Write entirely in capital letters.",
               " Use the word harbor exactly twice.\n5. Do not use the letter z anywhere.\n"
               "6. Number every paragraph."]

    def script(name, prompt, n):
        if name == "augment_list":
            assert n == 2
            return answers
        return ["NO" if "capital letters" in prompt else "YES"]

    ctx = make_ctx(ScriptedLLM(script))
    stage = make("augment", SEEDS, augment_style="list", augment_per_prompt=3, augment_samples=2,
                 augment_max_new=2)
    out = await stage.process(make_seed_batches(SEEDS, 1, 3)[0], ctx)
    assert [i.text for i in out if i.source == "augment"] == [
        "Use the word harbor exactly twice.", "Do not use the letter z anywhere."]
    assert ctx.funnel.to_dict()["augment.candidate"]["dropped"] == {
        "duplicate": 1, "not_checkable": 1, "over_max_new": 1}


async def test_augment_without_filter_and_unreadable_answer():
    llm = ScriptedLLM(lambda name, prompt, n: ["I'd rather not."] if name == "augment" else ["YES"])
    ctx = make_ctx(llm)
    out = await make("augment", SEEDS, checkable_filter=False).process(make_seed_batches(SEEDS, 1, 2)[0], ctx)
    assert [i.text for i in out] == [s.text for s in SEEDS]         # passthrough only
    assert llm.count("checkable") == 0
    assert ctx.funnel.to_dict()["augment.answer"]["dropped"] == {"no_list": 1}


# ---------------------------------------------------------------- verifiers

def verifier_json(code, cases):
    return orjson.dumps({"func": code, "cases": [{"input": i, "output": o} for i, o in cases]}).decode()


async def test_verifiers_one_request_pooled_and_counted():
    answers = [
        "```json\n" + verifier_json(NO_COMMA, [("a b", True), ("a, b", False)]) + "\n```",
        "Sure! " + verifier_json(NO_COMMA.replace("return", "return  "), [("a b", True), ("x,y", "false")]),
        verifier_json("def check(response):\n    return True\n", [("q", True)]),
        "I cannot do that.",
        Completion(text='{"func": "def evaluate(response):\\n    return ', finish_reason="length"),
    ]
    llm = ScriptedLLM(lambda name, prompt, n: answers[:n])
    ctx = make_ctx(llm)
    [draft] = await make("verifiers", verifier_k=5, verifier_style="json").process(Instruction("Do not use any commas."), ctx)
    assert [(c[0], c[2]) for c in llm.calls] == [("verifier", 5)]
    assert "Constraint: Do not use any commas." in llm.calls[0][1]
    assert len(draft.functions) == 1                  # the second differs only in spacing
    assert [(c.input, c.expected) for c in draft.cases] == [("a b", True), ("a, b", False), ("x,y", False)]
    f = ctx.funnel.to_dict()
    assert f["verifiers.answer"]["kept"] == 2
    assert f["verifiers.answer"]["dropped"] == {"no_evaluate_function": 1, "no_json": 1, "truncated": 1}


async def test_verifiers_drop_reasons():
    ctx = make_ctx(ScriptedLLM(lambda name, prompt, n: ["nothing useful"] * n))
    assert await make("verifiers", verifier_k=3, verifier_style="json").process(Instruction("Use no commas."), ctx) == []
    assert ctx.funnel.to_dict()["verifiers"]["dropped"] == {"no_parsable_answer": 1}
    ctx = make_ctx(ScriptedLLM(lambda name, prompt, n: [verifier_json(NO_COMMA, [])] * n))
    assert await make("verifiers", verifier_k=2, verifier_style="json").process(Instruction("Use no commas."), ctx) == []
    assert ctx.funnel.to_dict()["verifiers"]["dropped"] == {"no_cases": 1}


# ---------------------------------------------------------------- back-translation

def verified(*codes, text="Do not use any commas in your reply."):
    return VerifiedInstruction(Instruction(text), tuple((Verifier(c), 1.0) for c in codes),
                               (Case("a b", True), Case("a, b", False)))


SAYS = {NO_COMMA: "Your reply must not contain commas.", LOWER: "Your reply must be lowercase.",
        RAISES: "Your reply must be rejected always."}


def bt_script(verdicts):
    def script(name, prompt, n):
        if name == "backtranslate":
            return [next(s for c, s in SAYS.items() if c.rstrip() in prompt)]
        assert name == "nli"
        assert "Premise: Do not use any commas in your reply." in prompt
        return [verdicts[line_after(prompt, "Hypothesis")]]
    return script


async def test_backtranslate_drops_contradicted_functions():
    verdicts = {SAYS[NO_COMMA]: "Both ask for no commas.\nentailment",
                SAYS[LOWER]: "Different requirement, but compatible: **Neutral**",
                SAYS[RAISES]: "These conflict.\nContradiction"}
    llm = ScriptedLLM(bt_script(verdicts))
    ctx = make_ctx(llm)
    [out] = await make("backtranslate").process(verified(NO_COMMA, LOWER, RAISES), ctx)
    assert [f.code for f, _ in out.functions] == [NO_COMMA, LOWER]
    assert [(b.text, b.label) for b in out.back_translations] == [
        (SAYS[NO_COMMA], "entailment"), (SAYS[LOWER], "neutral"), (SAYS[RAISES], "contradiction")]
    assert ctx.funnel.to_dict()["backtranslate.function"]["dropped"] == {"contradiction": 1}


async def test_backtranslate_instruction_dropped_when_nothing_left():
    llm = ScriptedLLM(bt_script({SAYS[NO_COMMA]: "contradiction", SAYS[LOWER]: "I cannot tell."}))
    ctx = make_ctx(llm)
    assert await make("backtranslate").process(verified(NO_COMMA, LOWER), ctx) == []
    f = ctx.funnel.to_dict()
    assert f["backtranslate"]["dropped"] == {"no_function_left": 1}
    assert f["backtranslate.function"]["dropped"] == {"contradiction": 1, "unparsable_nli": 1}


async def test_backtranslate_off_passes_through():
    llm = ScriptedLLM(lambda *a: pytest.fail("no LLM call expected"))
    item = verified(NO_COMMA)
    assert await make("backtranslate", backtranslate=False).process(item, make_ctx(llm)) == [item]


# ---------------------------------------------------------------- queries

def test_load_queries_formats(tmp_path):
    path = tmp_path / "q.jsonl"
    rows = [{"query": "Plan a picnic."},
            {"conversations": [{"from": "system", "value": "be nice"}, {"from": "human", "value": "Name a bird."},
                               {"from": "gpt", "value": "Robin."}]},
            {"messages": [{"role": "user", "content": "Plan a picnic."}]},
            {"conversations": [{"from": "gpt", "value": "only me"}]}]
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in rows) + b"\n\n")
    errors = []
    assert [q.text for q in load_queries(path, on_error=errors.append)] == ["Plan a picnic.", "Name a bird."]
    assert len(errors) == 1 and errors[0].startswith(f"{path}:4:")
    assert len(load_queries()) == 64


async def test_query_join_is_deterministic_fan_out():
    pool = [Query(f"Question number {i}?") for i in range(10)]
    ctx = make_ctx()
    item = verified(NO_COMMA)
    tasks = await make("queries", queries=pool, queries_per_instruction=4, seed=3).process(item, ctx)
    assert len(tasks) == 4 and len({t.query_id for t in tasks}) == 4
    assert all(t.prompt.startswith(t.query) and t.prompt.endswith(item.instruction.text) for t in tasks)
    again = await make("queries", queries=pool, queries_per_instruction=4, seed=3).process(item, ctx)
    assert [t.id for t in again] == [t.id for t in tasks]
    other = await make("queries", queries=pool, queries_per_instruction=4, seed=3).process(
        verified(NO_COMMA, text="Use no commas, please."), ctx)
    assert [t.query_id for t in other] != [t.query_id for t in tasks]
    assert len(await make("queries", queries=pool, queries_per_instruction=50).process(item, make_ctx())) == 10


async def test_query_cap_shares_the_run_total_in_the_order_instructions_arrive():
    pool = [Query(f"Question number {i}?") for i in range(10)]
    items = [verified(NO_COMMA, text=f"Constraint number {i}.") for i in range(4)]
    uncapped = make("queries", queries=pool, queries_per_instruction=4, seed=3)
    capped = make("queries", queries=pool, queries_per_instruction=4, seed=3, max_queries=10)
    ctx = make_ctx()
    got = [await capped.process(item, ctx) for item in items]
    assert [len(tasks) for tasks in got] == [4, 4, 2, 0]
    # a cut grant is the first of the picks the instruction gets without a cap
    assert [t.id for t in got[2]] == [t.id for t in (await uncapped.process(items[2], make_ctx()))[:2]]
    queries = ctx.funnel.to_dict()["queries"]
    assert queries["dropped"] == {"query_budget": 1}


async def test_a_rerun_gives_each_instruction_the_grant_it_had_whatever_the_order(tmp_path):
    from engine.run import RunStore, Stored
    from engine.state import StateStore
    pool = [Query(f"Question number {i}?") for i in range(10)]
    items = [verified(NO_COMMA, text=f"Constraint number {i}.") for i in range(4)]
    cfg = Config.from_flat(queries_per_instruction=4, seed=3, max_queries=10)
    with StateStore(tmp_path / "state.db") as store:
        first = QueryJoinStage.from_config(cfg, pool, Stored(RunStore(store)).query_budget(cfg))
        before = {item.id: [t.id for t in await first.process(item, make_ctx())] for item in items[:3]}
    with StateStore(tmp_path / "state.db") as store:   # the run is stopped and started again
        again = QueryJoinStage.from_config(cfg, pool, Stored(RunStore(store)).query_budget(cfg))
        after = {item.id: [t.id for t in await again.process(item, make_ctx())]
                 for item in reversed(items)}
    assert [len(before[item.id]) for item in items[:3]] == [4, 4, 2]
    assert {k: after[k] for k in before} == before      # the same tasks, in any order
    assert after[items[3].id] == []                     # the cap was spent before the stop


# ---------------------------------------------------------------- responses (real pool)

def task_for(*codes):
    return QueryTask(verified(*codes), "q1", "Describe tea.", "Describe tea.\n\nDo not use any commas in your reply.")


@on_module_loop
async def test_responses_graded_in_one_batch(shared_pool):
    answers = [Completion("tea is warm and calm"),            # 2/2 (RAISES fails): 2/3
               Completion("Tea is warm"),                     # NO_COMMA only: 1/3
               Completion("tea, warm"),                       # LOWER only: 1/3
               Completion("   "),                             # passes both, but empty
               Completion("tea is", finish_reason="length")]  # passes, but truncated
    llm = ScriptedLLM(lambda name, prompt, n: answers[:n])
    ctx = make_ctx(llm, RecordingPool(shared_pool))
    [result] = await make("responses", responses_k=5).process(task_for(NO_COMMA, LOWER, RAISES), ctx)
    assert [(c[0], c[2]) for c in llm.calls] == [("response", 5)]
    assert llm.calls[0][1] == "Describe tea.\n\nDo not use any commas in your reply."
    assert len(ctx.executor.batches) == 1 and len(ctx.executor.batches[0]) == 3
    assert all(inputs == [a.text for a in answers] for _, inputs in ctx.executor.batches[0])
    rates = [round(r.pass_rate, 3) for r in result.responses]
    assert rates == [0.667, 0.333, 0.333, 0.667, 0.667]
    assert [r.passed for r in result.responses] == [True, False, False, False, False]
    first = result.responses[0].results
    assert [(x.status, x.value) for x in first] == [("ok", True), ("ok", True), ("error", None)]
    assert result.model == "scripted-model"
    assert ctx.funnel.to_dict()["responses.sample"]["dropped"] == {"low_pass_rate": 2, "empty": 1, "truncated": 1}


@on_module_loop
async def test_responses_tell_the_pool_while_other_queries_of_the_instruction_are_generating(shared_pool):
    """Three queries of one instruction finish generating one after another: the first two
    checks go out with more_coming (the pool may hold them for the third), the last without."""
    gates = {q: asyncio.Event() for q in ("q1", "q2", "q3")}

    class GatedLLM(ScriptedLLM):
        async def generate(self, prompt, *, n=1, params=None):
            await gates[prompt.split(":", 1)[0]].wait()
            return await super().generate(prompt, n=n, params=params)

    llm = GatedLLM(lambda name, prompt, n: ["tea is warm"] * n)
    item = verified(NO_COMMA, LOWER)
    tasks = [QueryTask(item, q, q, f"{q}: Describe tea.") for q in gates]
    ctx = make_ctx(llm, RecordingPool(shared_pool))
    stage = make("responses", responses_k=2)
    running = [asyncio.create_task(stage.process(t, ctx)) for t in tasks]
    for q in gates:
        await asyncio.sleep(0.05)
        gates[q].set()
    results = await asyncio.gather(*running)
    assert [len(r) for r in results] == [1, 1, 1]
    assert ctx.executor.more_coming == [True, True, False]
    assert stage._generating == {}                     # nothing left behind per instruction


@on_module_loop
async def test_responses_threshold_and_drop(shared_pool):
    llm = ScriptedLLM(lambda name, prompt, n: ["Tea, Warm", "tea, warm"][:n])
    ctx = make_ctx(llm, shared_pool)
    assert await make("responses", responses_k=2).process(task_for(NO_COMMA, LOWER), ctx) == []    # 0 and exactly 0.5
    assert ctx.funnel.to_dict()["responses"]["dropped"] == {"no_response_passed": 1}
    ctx = make_ctx(llm, shared_pool)
    [result] = await make("responses", responses_k=2, pass_threshold=0.4).process(task_for(NO_COMMA, LOWER), ctx)
    assert [r.passed for r in result.responses] == [False, True]


@on_module_loop
async def test_responses_plain_reply_verified_in_the_same_batch_as_a_reject_only(shared_pool):
    """plain_rejects: one reply to the query alone rides in the samples' batch; it is kept as a
    reject only when finished and failing every function, and never counts as a sample."""
    plain = {"Describe tea.": Completion("Tea, warm, calm")}                 # fails NO_COMMA and LOWER

    def script(name, prompt, n):
        if name == "case_plain":
            return [plain[prompt.strip().splitlines()[-1]]] * n
        return ["tea is warm", "tea, warm"][:n]

    llm = ScriptedLLM(script)
    ctx = make_ctx(llm, RecordingPool(shared_pool))
    [result] = await make("responses", responses_k=2, plain_rejects=True).process(task_for(NO_COMMA, LOWER), ctx)
    assert sorted(c[0] for c in llm.calls) == ["case_plain", "response"]
    [batch] = ctx.executor.batches                                           # one batch, plain reply last
    assert all(inputs == ["tea is warm", "tea, warm", "Tea, warm, calm"] for _, inputs in batch)
    assert [r.text for r in result.responses] == ["tea is warm", "tea, warm"]
    [p] = result.plain
    assert p.pass_rate == 0.0 and not p.passed
    rows = ctx.funnel.to_dict()
    assert rows["responses.sample"]["in"] == 2 and rows["responses.plain"]["kept"] == 1
    # one that meets a function anyway, or is cut off, is counted as dropped
    for text, finish, reason in (("tea is calm", "stop", "followed"), ("Tea, warm", "length", "truncated")):
        plain["Describe tea."] = Completion(text, finish_reason=finish)
        ctx = make_ctx(ScriptedLLM(script), shared_pool)
        await make("responses", responses_k=2, plain_rejects=True).process(task_for(NO_COMMA, LOWER), ctx)
        assert ctx.funnel.to_dict()["responses.plain"]["dropped"] == {reason: 1}
    # off (the default): not asked for
    llm = ScriptedLLM(script)
    [result] = await make("responses", responses_k=2).process(task_for(NO_COMMA, LOWER), make_ctx(llm, shared_pool))
    assert [c[0] for c in llm.calls] == ["response"] and result.plain == ()


# ---------------------------------------------------------------- scoring

def result_with(*texts_passed):
    responses = tuple(ResponseRecord(t, 1.0 if p else 0.0, (FunctionResult("f", "ok", p),), p)
                      for t, p in texts_passed)
    return QueryResult(task_for(NO_COMMA), responses, "m")


async def test_scoring_keeps_high_scores():
    judged = {"good": "Helpful and compliant.\nScore: 9", "meh": "**Score:** 5", "odd": "Looks fine to me."}

    def script(name, prompt, n):
        assert name == "score" and "[Request]\nDescribe tea." in prompt
        return [judged[prompt.split("[Reply]\n")[1].split("\n")[0]]]

    llm = ScriptedLLM(script)
    ctx = make_ctx(llm)
    [out] = await make("scoring").process(result_with(("good", True), ("meh", True), ("odd", True), ("bad", False)), ctx)
    assert [r.score for r in out.responses] == [9, 5, 0, None]     # the failed one is never judged
    assert llm.count("score") == 3
    assert ctx.funnel.to_dict()["scoring.response"]["dropped"] == {"low_score": 1, "unparsable_score": 1}


async def test_scoring_drop_and_off():
    ctx = make_ctx(ScriptedLLM(lambda *a: ["Score: 7"]))
    assert await make("scoring", score_min=8).process(result_with(("x", True)), ctx) == []
    assert ctx.funnel.to_dict()["scoring"]["dropped"] == {"low_score": 1}
    ctx = make_ctx(ScriptedLLM(lambda *a: ["no number"]))
    assert await make("scoring").process(result_with(("x", True)), ctx) == []
    assert ctx.funnel.to_dict()["scoring"]["dropped"] == {"unparsable_score": 1}
    item = result_with(("x", True))
    assert await make("scoring", scoring=False).process(item, make_ctx(ScriptedLLM(lambda *a: pytest.fail()))) == [item]


async def test_scoring_until_enough_judges_best_first_and_stops():
    judged = {"meh": "Score: 5", "good": "Score: 9", "also": "Score: 10", "bad": "Score: 10"}
    llm = ScriptedLLM(lambda name, prompt, n: [judged[prompt.split("[Reply]\n")[1].split("\n")[0]]])
    ctx = make_ctx(llm)
    item = result_with(("meh", True), ("good", True), ("also", True), ("bad", False))
    [out] = await make("scoring", score_until=1).process(item, ctx)
    # "meh" (first in sample order) is judged first and falls short, "good" is kept, "also" is
    # never asked about: stored 0, so no export uses it
    assert [r.score for r in out.responses] == [5, 9, 0, None]
    assert llm.count("score") == 2
    row = ctx.funnel.to_dict()["scoring.response"]
    assert row["kept"] == 1 and row["dropped"] == {"low_score": 1, "not_needed": 1}
    # a higher pass rate is judged first
    best = QueryResult(item.task, (ResponseRecord("meh", 0.6, item.responses[0].results, True),
                                   ResponseRecord("also", 1.0, item.responses[1].results, True)), "m")
    llm.calls.clear()
    [out] = await make("scoring", score_until=1).process(best, make_ctx(llm))
    assert [r.score for r in out.responses] == [0, 10] and llm.count("score") == 1


def test_default_stages_builds_each_stage_from_its_section():
    cfg = Config.from_flat(verifier_k=3, case_agreement=0.6, audit=False, queries_per_instruction=2, responses_k=4,
                           score_min=7, backtranslate=False)
    stages = default_stages(cfg, [], [Query("q")])
    assert [s.name for s in stages] == list(CHAIN)
    _, verifiers, crossval, back, audit, queries, responses, scoring = stages
    assert (verifiers.sampling.n, crossval.case_agreement, crossval.probes) == (3, 0.6, None)
    assert (back.enabled, audit.enabled, queries.per_instruction, responses.sampling.n) == (False, False, 2, 4)
    assert scoring.score_min == 7 and scoring.sampling.temperature == cfg.backtranslate.judge_temperature
    with pytest.raises(ValueError, match="no stage called 'verify'"):
        default_stages(cfg, [], [], names=("verify",))
