"""The verifier audit: kept functions run on degenerate probes in the real sandbox pool; what
flag, downweight and drop do to the record, the funnel and the reward weights."""
from dataclasses import replace

import pytest

from engine.config import Config
from engine.records import Case, Instruction, Query, Verifier, VerifiedInstruction, VerifierDraft
from engine.stage import Context, Funnel
from engine.stages import AuditStage, CrossValStage
from engine.stages.audit import LONG_TEXT_WORDS, PROBES, long_text, probes
from sandbox_pool import Limits, PoolConfig, SandboxPool
from tests.doubles import RecordingPool

INSTRUCTION = "Answer in at least three words and end with the word done."
QUERY = "How do I boil an egg?"
# accepts everything: the reward a policy could get for any text at all
ANYTHING = "def evaluate(response):\n    return True\n"
# a sound check: rejects every probe
SOUND = "def evaluate(response):\n    return len(response.split()) >= 3 and response.rstrip().endswith('done')\n"
# lets the empty text through, a typical slip of LLM-written checks
EMPTY_OK = "def evaluate(response):\n    return not response.strip() or response.rstrip().endswith('done')\n"


def audit_stage(cfg: Config):
    """The audit stage as a run builds it from `cfg`."""
    return AuditStage.from_config(cfg, [Query(QUERY)])


def item() -> VerifiedInstruction:
    return VerifiedInstruction(Instruction(INSTRUCTION),
                               tuple((Verifier(code), 1.0) for code in (ANYTHING, SOUND)), ())


def test_probes_are_degenerate():
    texts = probes(INSTRUCTION, QUERY)
    assert list(texts) == list(PROBES)
    assert texts["empty"] == "" and texts["instruction"] == INSTRUCTION and texts["query_echo"] == QUERY
    assert len(set(texts["repeated_word"].split())) == 1 and len(texts["repeated_word"].split()) > 1
    assert len(long_text().split()) == LONG_TEXT_WORDS


@pytest.mark.parametrize("action", ["flag", "downweight", "drop"])
async def test_audit_actions(action):
    cfg = Config.from_flat(audit_action=action, audit_weight=0.25)
    async with SandboxPool(PoolConfig(workers=1, limits=Limits(timeout_s=2.0))) as pool:
        ctx = Context(llm=None, executor=pool, funnel=Funnel())
        [out] = await audit_stage(cfg).process(item(), ctx)
    anything, sound = Verifier(ANYTHING).id, Verifier(SOUND).id
    audits = {a.verifier_id: a for a in out.audits}
    assert audits[sound].accepted == () and not audits[sound].flagged and out.weight(sound) == 1.0
    row = ctx.funnel.to_dict()["audit.function"]
    assert row["in"] == 2 and row["kept"] == 1
    if action == "drop":
        assert [f.id for f, _ in out.functions] == [sound] and anything not in audits
        assert row["out"] == 1 and row["dropped"] == {"flagged_dropped": 1}
    else:
        assert audits[anything].accepted == PROBES and audits[anything].flagged
        assert out.weight(anything) == (0.25 if action == "downweight" else 1.0)
        assert row["out"] == 2
        assert row["dropped"] == {"flagged" if action == "flag" else "flagged_downweighted": 1}
    probe_row = ctx.funnel.to_dict()["audit.probe"]
    assert probe_row["in"] == 10 and probe_row["kept"] == 5
    assert probe_row["dropped"] == {f"accepted_{p}": 1 for p in PROBES}
    # the verdicts survive the record's round trip (the state store, exports, the reward service)
    assert VerifiedInstruction.from_dict(out.to_dict()) == out


async def test_audit_threshold_and_all_dropped():
    inst = VerifiedInstruction(Instruction(INSTRUCTION), ((Verifier(EMPTY_OK), 1.0),), ())
    async with SandboxPool(PoolConfig(workers=1, limits=Limits(timeout_s=2.0))) as pool:
        # one accepted probe is within a tolerance of 1: not flagged
        ctx = Context(llm=None, executor=pool, funnel=Funnel())
        [kept] = await audit_stage(Config.from_flat(audit_max_accepted=1)).process(inst, ctx)
        assert kept.audits[0].accepted == ("empty",) and not kept.audits[0].flagged
        # dropping the only function drops the instruction, with its reason
        ctx = Context(llm=None, executor=pool, funnel=Funnel())
        assert await audit_stage(Config.from_flat(audit_action="drop")).process(inst, ctx) == []
        assert ctx.funnel.to_dict()["audit"]["dropped"] == {"all_functions_flagged": 1}
        # audit off: passes through untouched
        ctx = Context(llm=None, executor=pool, funnel=Funnel())
        assert await audit_stage(Config.from_flat(audit=False)).process(inst, ctx) == [inst]


async def test_audit_reads_the_verdicts_crossval_got_in_the_same_job():
    """Cross-validation runs the probes after the cases in each function's job; the audit
    then sends nothing to the pool, and decides as it does when it runs the probes itself."""
    cfg = Config.from_flat(two_sided_cases=False)
    cases = (Case("the answer is done", True), Case("nope", False))
    drafted = VerifierDraft(Instruction(INSTRUCTION), tuple(Verifier(c) for c in (ANYTHING, SOUND, EMPTY_OK)), cases)
    async with SandboxPool(PoolConfig(workers=2, limits=Limits(timeout_s=2.0))) as pool:
        ctx = Context(llm=None, executor=RecordingPool(pool), funnel=Funnel())
        [verified] = await CrossValStage.from_config(cfg, [Query(QUERY)]).process(drafted, ctx)
        assert sorted(c for f, _ in verified.functions for c in [f.code]) == sorted([SOUND, EMPTY_OK])
        assert [len(inputs) for _, inputs in ctx.executor.batches[0]] == [len(cases) + len(PROBES)] * 3
        [audited] = await audit_stage(cfg).process(verified, ctx)
        assert len(ctx.executor.batches) == 1                  # nothing more went to the pool
        # the same record without the carried verdicts: the audit runs the probes itself
        alone = Context(llm=None, executor=RecordingPool(pool), funnel=Funnel())
        [rerun] = await audit_stage(cfg).process(replace(verified, probe_verdicts=()), alone)
        assert len(alone.executor.batches) == 1
    assert audited.audits == rerun.audits
    assert {a.verifier_id: a.accepted for a in audited.audits} == {Verifier(SOUND).id: (),
                                                                   Verifier(EMPTY_OK).id: ("empty",)}
    assert ctx.funnel.to_dict()["audit.probe"] == alone.funnel.to_dict()["audit.probe"]
