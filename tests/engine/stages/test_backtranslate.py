"""Back-translation's rule (config.backtranslate_rule): contradiction drops only functions whose
back-translation contradicts the instruction; equivalence also those that say something else."""
import re

from engine.config import Config
from engine.records import Case, Instruction, Verifier, VerifiedInstruction
from engine.stage import Context, Funnel
from engine.stages import BackTranslateStage
from tests.doubles import ScriptedLLM

INSTRUCTION = "Put your entire reply inside double quotation marks."
QUOTED = Verifier("def evaluate(response):\n    s = response.strip()\n    return s[:1] == '\"' and s[-1:] == '\"'\n")
NO_APOSTROPHE = Verifier("def evaluate(response):\n    return \"'\" not in response\n")
SAYS = {QUOTED: "Your reply must begin and end with a double quotation mark.",
        NO_APOSTROPHE: "Your reply must not contain single quotes."}
# (premise, hypothesis) -> the judge's label
NLI = {(INSTRUCTION, SAYS[QUOTED]): "entailment", (SAYS[QUOTED], INSTRUCTION): "entailment",
       (INSTRUCTION, SAYS[NO_APOSTROPHE]): "neutral", (SAYS[NO_APOSTROPHE], INSTRUCTION): "neutral"}


def bt_script(nli):
    def script(name, prompt, n):
        if name == "backtranslate":
            return [next(s for f, s in SAYS.items() if f.code.rstrip() in prompt)]
        assert name == "nli"
        pair = tuple(re.search(rf"^{label}: (.*)$", prompt, re.M).group(1) for label in ("Premise", "Hypothesis"))
        return [f"Verdict:\n{nli[pair]}"]
    return script


def drifted():
    return VerifiedInstruction(Instruction(INSTRUCTION), ((QUOTED, 1.0), (NO_APOSTROPHE, 1.0)),
                               (Case('"a"', True), Case("a", False)))


async def backtranslate(nli=NLI, **cfg):
    llm = ScriptedLLM(bt_script(nli))
    ctx = Context(llm=llm, executor=None, funnel=Funnel())
    out = await BackTranslateStage.from_config(Config.from_flat(**cfg)).process(drifted(), ctx)
    return out, ctx.funnel.to_dict(), llm


async def test_contradiction_rule_keeps_the_drifted_function():
    [out], funnel, llm = await backtranslate()
    assert [f for f, _ in out.functions] == [QUOTED, NO_APOSTROPHE]
    assert llm.count("nli") == 2                                        # one direction each
    assert funnel["backtranslate.function"]["dropped"] == {}


async def test_equivalence_rule_drops_the_drifted_function():
    [out], funnel, llm = await backtranslate(backtranslate_rule="equivalence")
    assert [f for f, _ in out.functions] == [QUOTED]
    assert [(b.verifier_id, b.label) for b in out.back_translations] == [(QUOTED.id, "entailment"),
                                                                         (NO_APOSTROPHE.id, "neutral")]
    # the way back is asked only after an entailment: 2 calls for QUOTED, 1 for NO_APOSTROPHE
    assert llm.count("nli") == 3
    assert funnel["backtranslate.function"]["dropped"] == {"not_equivalent": 1}


async def test_equivalence_needs_entailment_both_ways():
    # the back-translation says less than the instruction: entailed by it, but not entailing it
    one_way = {**NLI, (INSTRUCTION, SAYS[NO_APOSTROPHE]): "entailment",
               (SAYS[NO_APOSTROPHE], INSTRUCTION): "contradiction"}
    [out], funnel, _ = await backtranslate(one_way, backtranslate_rule="equivalence")
    assert [f for f, _ in out.functions] == [QUOTED]
    assert dict(((b.verifier_id, b.label) for b in out.back_translations))[NO_APOSTROPHE.id] == "contradiction"
    assert funnel["backtranslate.function"]["dropped"] == {"contradiction": 1}
    # under the contradiction rule only the first direction is judged: entailment, kept
    [out], _, _ = await backtranslate(one_way)
    assert len(out.functions) == 2
