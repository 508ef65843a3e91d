"""Minimal pairs (config.minimal_pairs): cases that differ only in the constraint tell a right
checker from one keyed on a side feature. The verifier stage with a scripted LLM, then
cross-validation on the REAL sandbox pool, each failure with the mechanism off and on."""
import re
from collections import Counter

import orjson
import pytest

from engine.config import Config
from engine.llm import Completion
from engine.records import Case, Instruction, Query, Verifier, VerifierDraft
from engine.stage import Context, Funnel
from engine.stages import CrossValStage, VerifierStage
from engine.stages.crossval import judge
from engine.stages.pairs import change_share, pair_flaw
from engine.stages.verifiers import spread_temperatures
from sandbox_pool import Outcome
from tests.doubles import ScriptedLLM, real_pool

HEADER = "def evaluate(response: str) -> bool:\n"
QUERIES = [Query("What is the capital of France?"), Query("How do plants make food?")]


def edited_reply(prompt: str) -> str:
    return re.search(r"\[Reply\]\n(.*)\n\[End of reply\]", prompt, re.S).group(1)


def script_for(bodies, follow, plain, edits):
    """`follow`/`plain`: the reply per query text; `edits`: reply -> its edit (pair_break for a
    follow reply, pair_meet for a plain one)."""
    def script(name, prompt, n):
        if name == "verifier_code":
            return [Completion(text=b) for b in bodies][:n]
        if name == "case_follow":
            return [next(r for q, r in follow.items() if f"Message: {q}" in prompt)]
        if name == "case_plain":
            return [next(r for q, r in plain.items() if q in prompt)]
        if name in ("pair_break", "pair_meet"):
            return [edits[edited_reply(prompt)]]
        raise AssertionError(f"unexpected request {name}")
    return script


async def verify(instruction, script, **cfg):
    """Verifier stage then cross-validation, as a run chains them; (kept codes, funnel, llm)."""
    config = Config.from_flat(verifier_k=3, verifier_case_samples=2, **cfg)
    llm = ScriptedLLM(script)
    ctx = Context(llm=llm, executor=None, funnel=Funnel())
    [draft] = await VerifierStage.from_config(config, QUERIES).process(Instruction(instruction), ctx)
    async with real_pool() as pool:
        ctx.executor = pool
        out = await CrossValStage.from_config(config, QUERIES).process(draft, ctx)
    kept = [f.code for f, _ in out[0].functions] if out else []
    return kept, ctx.funnel.to_dict(), llm


# ---------------------------------------------------------------- double quotation marks

QUOTES = "Put your entire reply inside double quotation marks."
QUOTED = "\n    s = response.strip()\n    return len(s) >= 2 and s.startswith('\"') and s.endswith('\"')\n"
QUOTED_2 = "\n    text = response.strip()\n    return text[:1] == '\"' and text[-1:] == '\"' and len(text) > 1\n"
NO_APOSTROPHE = "\n    return \"'\" not in response\n"

# the follow replies happen to have no apostrophe, the plain replies do
QUOTE_FOLLOW = {QUERIES[0].text: '"The capital of France is Paris."',
                QUERIES[1].text: '"Plants make food by photosynthesis, from sunlight, water and air."'}
QUOTE_PLAIN = {QUERIES[0].text: "The capital of France is Paris. It's famous for the Eiffel Tower.",
               QUERIES[1].text: "Plants make food through photosynthesis. It's how a leaf turns light into sugar."}
QUOTE_EDITS = {**{r: r.strip('"') for r in QUOTE_FOLLOW.values()},      # quotes removed, still no apostrophe
               **{r: f'"{r}"' for r in QUOTE_PLAIN.values()}}          # wrapped, apostrophe kept


async def test_quotation_marks_without_pairs_every_case_agrees_with_the_no_apostrophe_function():
    script = script_for([QUOTED, QUOTED_2, NO_APOSTROPHE], QUOTE_FOLLOW, QUOTE_PLAIN, QUOTE_EDITS)
    kept, funnel, llm = await verify(QUOTES, script)
    assert HEADER + NO_APOSTROPHE.strip("\n") + "\n" in kept              # the wrong checker survives
    assert len(kept) == 3 and funnel["crossval.case"]["kept"] == 4
    assert llm.count("pair_break") == llm.count("pair_meet") == 0
    assert "verifiers.minimal_pair" not in funnel and "crossval.pair" not in funnel


async def test_quotation_marks_minimal_pairs_drop_the_no_apostrophe_function():
    script = script_for([QUOTED, QUOTED_2, NO_APOSTROPHE], QUOTE_FOLLOW, QUOTE_PLAIN, QUOTE_EDITS)
    kept, funnel, llm = await verify(QUOTES, script, minimal_pairs=True)
    assert kept == [HEADER + QUOTED.strip("\n") + "\n", HEADER + QUOTED_2.strip("\n") + "\n"]
    assert llm.count("pair_break") == 2 and llm.count("pair_meet") == 2   # one edit per case
    assert funnel["verifiers.minimal_pair"] == {"in": 4, "kept": 4, "out": 4, "dropped": {}}
    assert funnel["crossval.pair"]["kept"] == 4 and funnel["crossval.case"]["kept"] == 8
    # right on the 4 original cases, wrong on the 4 edits: 0.5 is not more than function_accuracy
    assert funnel["crossval.function"]["dropped"] == {"low_accuracy": 1}


# ---------------------------------------------------------------- words, not characters

WORDS = "Answer in under 60 words."
WORD_COUNT = "\n    return len(response.split()) < 60\n"
WORD_COUNT_2 = "\n    words = [w for w in response.split() if w]\n    return len(words) <= 59\n"
CHAR_COUNT = "\n    return len(response) < 60\n"

PARIS = ("Paris is the capital of France and its largest city. It sits on the river Seine in the north of "
         "the country. The city is known for its museums, its cafes, its wide avenues and its bridges. "
         "Millions of people visit every year to see the cathedral, the old palace of the kings and the "
         "tall iron tower built for a world fair more than a century ago, which is now the most famous "
         "sight in the whole country.")
LEAVES = ("Plants make their own food through photosynthesis. Their leaves take in light from the sun, "
          "carbon dioxide from the air and water from the soil through the roots. Inside the leaf, a green "
          "pigment called chlorophyll captures the light and uses its energy to turn the water and carbon "
          "dioxide into sugar, which feeds the plant and helps it grow, and oxygen, which goes back out "
          "into the air for animals to breathe.")
WORD_FOLLOW = {QUERIES[0].text: "The capital of France is Paris.", QUERIES[1].text: "Plants make food from sunlight."}
WORD_PLAIN = {QUERIES[0].text: PARIS, QUERIES[1].text: LEAVES}


def first_words(text: str, n: int) -> str:
    return " ".join(text.split()[:n]).rstrip(",") + "."


# breaking "under 60 words" from a six-word reply takes 60 new words: no minimal edit;
# meeting it from a long reply is a cut that keeps 50 words (far more than 60 characters)
WORD_EDITS = {**{r: r + " " + " ".join(["indeed"] * 60) for r in WORD_FOLLOW.values()},
              **{r: first_words(r, 50) for r in WORD_PLAIN.values()}}


def test_word_fixture_sides():
    assert all(len(r.split()) > 60 for r in WORD_PLAIN.values())
    assert all(len(e.split()) < 60 and len(e) > 60 for r, e in WORD_EDITS.items() if r in WORD_PLAIN.values())


async def test_words_without_pairs_every_case_agrees_with_the_character_count():
    script = script_for([WORD_COUNT, WORD_COUNT_2, CHAR_COUNT], WORD_FOLLOW, WORD_PLAIN, WORD_EDITS)
    kept, funnel, _ = await verify(WORDS, script)
    assert HEADER + CHAR_COUNT.strip("\n") + "\n" in kept and len(kept) == 3


async def test_words_minimal_pairs_drop_the_character_count():
    script = script_for([WORD_COUNT, WORD_COUNT_2, CHAR_COUNT], WORD_FOLLOW, WORD_PLAIN, WORD_EDITS)
    kept, funnel, _ = await verify(WORDS, script, minimal_pairs=True)
    assert kept == [HEADER + WORD_COUNT.strip("\n") + "\n", HEADER + WORD_COUNT_2.strip("\n") + "\n"]
    # the padded follow replies are no minimal edit; the cut plain replies are
    assert funnel["verifiers.minimal_pair"] == {"in": 4, "kept": 2, "out": 2,
                                                "dropped": {"too_large_change": 2}}
    # 4 of 6 kept cases right (0.67): accuracy alone keeps it; missing a pair drops it
    assert funnel["crossval.function"]["dropped"] == {"missed_pair": 1}
    assert funnel["crossval.pair"]["kept"] == 2


# ---------------------------------------------------------------- rejection rules

def test_pair_flaw_rules():
    text = "The capital of France is Paris."
    assert pair_flaw(text, f'"{text}"', 0.5) is None
    assert pair_flaw(text, "  " + text + "\n", 0.5) == "equal_sides"         # only spacing around it
    assert pair_flaw(text, " \n", 0.5) == "empty"
    rewrite = "Berlin has many old buildings and a famous gate."
    assert change_share(text, rewrite) > 0.5 and pair_flaw(text, rewrite, 0.5) == "too_large_change"
    assert pair_flaw(text, rewrite, 1.0) is None                              # the share is a setting
    assert change_share(text, text) == 0.0


async def test_rejected_edits_are_counted_and_leave_the_case_unpaired():
    follow, plain = WORD_FOLLOW[QUERIES[0].text], WORD_PLAIN[QUERIES[0].text]
    edits = {follow: Completion(text=follow),                              # nothing changed
             plain: Completion(text="Berlin is in Germany."),              # a rewrite, not an edit
             WORD_FOLLOW[QUERIES[1].text]: Completion(text="Plants", finish_reason="length"),
             WORD_PLAIN[QUERIES[1].text]: Completion(text=first_words(LEAVES, 50))}
    llm = ScriptedLLM(script_for([WORD_COUNT], WORD_FOLLOW, WORD_PLAIN, edits))
    ctx = Context(llm=llm, executor=None, funnel=Funnel())
    stage = VerifierStage.from_config(Config.from_flat(verifier_k=1, verifier_case_samples=2, minimal_pairs=True),
                                      QUERIES)
    [draft] = await stage.process(Instruction(WORDS), ctx)
    assert ctx.funnel.to_dict()["verifiers.minimal_pair"] == {
        "in": 4, "kept": 1, "out": 1, "dropped": {"equal_sides": 1, "too_large_change": 1, "truncated": 1}}
    tagged = [c for c in draft.cases if c.pair]
    assert [(c.input, c.expected) for c in tagged] == [(LEAVES, False), (first_words(LEAVES, 50), True)]
    assert len({c.pair for c in tagged}) == 1 and len(draft.cases) == 5
    # a wider bound keeps the rewrite
    ctx = Context(llm=llm, executor=None, funnel=Funnel())
    stage = VerifierStage.from_config(Config.from_flat(verifier_k=1, verifier_case_samples=2, minimal_pairs=True,
                                                       minimal_pair_max_change=1.0), QUERIES)
    await stage.process(Instruction(WORDS), ctx)
    assert ctx.funnel.to_dict()["verifiers.minimal_pair"]["dropped"] == {"equal_sides": 1, "truncated": 1}


def test_only_a_pair_with_both_sides_kept_binds_the_functions():
    # judge() on given outcomes: three sound functions and `odd`, wrong on the pair's True side
    ok = lambda v: Outcome(status="ok", value=v)          # noqa: E731
    codes = [f"def evaluate(response):\n    return {expr}\n" for expr in
             ("',' not in response", "response.count(',') == 0", "not ',' in response", "len(response) > 5")]

    def run(edit_outcome):
        cases = [Case("a b", True, pair="p"), Case("a b edited", False, pair="p"), Case("a, b", False),
                 Case("c d", True)]
        sound = [ok(True), ok(edit_outcome), ok(False), ok(True)]
        results = [sound, sound, sound, [ok(False), ok(edit_outcome), ok(False), ok(True)]]
        return judge([Verifier(c) for c in codes], cases, results, 0.5, 0.5, two_sided=True)

    # the edit did not break the rule (every function passes it): that side loses agreement, and
    # the pair decides nothing; `odd` is right on 2 of the 3 kept cases and stays
    verdict = run(edit_outcome=True)
    assert (verdict.pairs, verdict.pairs_kept) == (1, 0) and len(verdict.functions) == 4
    # the edit broke it: both sides are kept, and `odd`, wrong on one, is dropped
    verdict = run(edit_outcome=False)
    assert (verdict.pairs, verdict.pairs_kept) == (1, 1)
    assert [f.code for f, _ in verdict.functions] == codes[:3]
    assert verdict.function_drops == Counter(missed_pair=1)


# ---------------------------------------------------------------- temperatures

def test_case_temperatures_spread_around_the_case_temperature():
    assert spread_temperatures(0.7, 0.0, 3) == [0.7, 0.7, 0.7]
    assert spread_temperatures(0.7, 0.3, 3) == pytest.approx([0.4, 0.7, 1.0])
    assert spread_temperatures(0.2, 0.4, 2) == pytest.approx([0.0, 0.6])      # never below 0
    assert spread_temperatures(0.7, 0.3, 1) == [0.7]


async def test_reply_cases_sample_at_the_spread_temperatures():
    script = script_for([WORD_COUNT], WORD_FOLLOW, WORD_PLAIN, WORD_EDITS)
    llm = ScriptedLLM(script)
    ctx = Context(llm=llm, executor=None, funnel=Funnel())
    cfg = Config.from_flat(verifier_k=1, verifier_case_samples=2, verifier_temperature=0.7,
                           verifier_case_temperature_spread=0.3)
    await VerifierStage.from_config(cfg, QUERIES).process(Instruction(WORDS), ctx)
    temps = {(name, prompt.splitlines()[-1]): params.temperature for name, prompt, _, params in llm.calls
             if name in ("case_follow", "case_plain")}
    assert temps == pytest.approx({("case_follow", f"Message: {QUERIES[0].text}"): 0.4,
                                   ("case_follow", f"Message: {QUERIES[1].text}"): 1.0,
                                   ("case_plain", QUERIES[0].text): 0.4, ("case_plain", QUERIES[1].text): 1.0})


# ---------------------------------------------------------------- other case styles

COMMA_EDITS = {"no commas here": "no, commas here", "a, b": "a b"}


@pytest.mark.parametrize("style", ["lists", "json"])
async def test_cases_of_every_style_are_paired(style):
    body = "\n    return ',' not in response\n"
    code = HEADER + body.strip("\n") + "\n"

    def script(name, prompt, n):
        if name == "verifier_code":
            return [body] * n
        if name == "verifier_cases":
            return ['{"follow": ["no commas here"], "break": ["a, b"]}'] * n
        if name == "verifier":
            cases = [{"input": "no commas here", "output": True}, {"input": "a, b", "output": False}]
            return [orjson.dumps({"func": code, "cases": cases}).decode()] * n
        return [COMMA_EDITS[edited_reply(prompt)]]
    llm = ScriptedLLM(script)
    ctx = Context(llm=llm, executor=None, funnel=Funnel())
    cfg = Config.from_flat(verifier_k=2, verifier_case_samples=2, verifier_cases_per_side=1, minimal_pairs=True,
                           verifier_style="code" if style == "lists" else "json", verifier_case_style="lists")
    [draft] = await VerifierStage.from_config(cfg, QUERIES).process(Instruction("Use no commas."), ctx)
    # two answers gave the same two cases: each is edited once
    assert llm.count("pair_break") == llm.count("pair_meet") == 1
    assert [(c.input, c.expected) for c in draft.cases] == [
        ("no commas here", True), ("no, commas here", False), ("a, b", False), ("a b", True)]
    assert draft.cases[0].pair == draft.cases[1].pair != draft.cases[2].pair == draft.cases[3].pair
    assert ctx.funnel.to_dict()["verifiers.minimal_pair"]["kept"] == 2
    # stored and read back with its tags; a case in no pair is stored as before
    assert VerifierDraft.from_dict(orjson.loads(orjson.dumps(draft.to_dict()))) == draft
    assert Case("a", True).to_dict() == {"input": "a", "expected": True}
