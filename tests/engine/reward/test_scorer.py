"""The reward scorer on the real sandbox pool: weighted and binary rewards, and a completion
that makes a verifier hang costs only its own verdicts, not its neighbours' in the batch."""
import time

import pytest

from engine.records import Instruction, Verifier, VerifiedInstruction, VerifierAudit
from engine.reward import RequestError, RewardSettings, RewardTable, Scorer
from sandbox_pool import Limits, PoolConfig, SandboxPool

NO_COMMA = "def evaluate(response):\n    return ',' not in response\n"
LOWER = "def evaluate(response):\n    return response == response.lower()\n"
SHORT = "def evaluate(response):\n    return len(response.split()) <= 5\n"
# a nested quantifier: exponential backtracking on "aaaa...!" (a completion can trigger it)
BACKTRACK = ("import re\n\ndef evaluate(response):\n"
             "    return re.fullmatch(r'(a+)+b', response) is None\n")


def table(*codes, weights=None) -> tuple[RewardTable, str]:
    fns = tuple((Verifier(c), 1.0) for c in codes)
    audits = tuple(VerifierAudit(Verifier(c).id, ("empty",), True, w)
                   for c, w in zip(codes, weights or ()) if w != 1.0)
    vi = VerifiedInstruction(Instruction("No commas, lowercase, short."), fns, (), (), audits)
    return RewardTable.from_instructions([vi]), vi.instruction.id


async def test_rate_binary_and_weights():
    t, iid = table(NO_COMMA, LOWER, SHORT, weights=(1.0, 1.0, 0.5))
    async with SandboxPool(PoolConfig(workers=2, limits=Limits(timeout_s=2.0))) as pool:
        rate = Scorer(t, pool, RewardSettings(mode="rate"))
        binary = Scorer(t, pool, RewardSettings(mode="binary", threshold=0.5))
        texts = ["all good here", "Has Capitals, and commas", "no commas but far too many words here",
                 "Capital only"]
        items = [(iid, x) for x in texts]
        scores = await rate.score(items)
        # weights 1, 1, 0.5 (SHORT was down-weighted by the audit): total 2.5
        assert [s.pass_rate for s in scores] == [1.0, 0.5 / 2.5, 2 / 2.5, 1.5 / 2.5]
        assert [s.reward for s in scores] == [s.pass_rate for s in scores]
        assert [[f.passed for f in s.functions] for s in scores][1] == [False, False, True]
        assert [s.reward for s in await binary.score(items)] == [1.0, 0.0, 1.0, 1.0]


async def test_hanging_completion_does_not_take_its_neighbours_down():
    t, iid = table(BACKTRACK, NO_COMMA)
    async with SandboxPool(PoolConfig(workers=2, limits=Limits(timeout_s=0.5))) as pool:
        scorer = Scorer(t, pool)
        hostile = "a" * 40 + "!"
        t0 = time.monotonic()
        scores = await scorer.score([(iid, hostile), (iid, "fine text"), (iid, "with, comma")])
        took = time.monotonic() - t0
        # the hostile one: its BACKTRACK verdict is a timeout (not a pass); NO_COMMA still judged it
        assert [f.status for f in scores[0].functions] == ["timeout", "ok"]
        assert scores[0].pass_rate == 0.5
        # its neighbours, in the same job behind it, were run again alone and judged for real
        assert [s.pass_rate for s in scores[1:]] == [1.0, 0.5]
        assert all(f.status == "ok" for s in scores[1:] for f in s.functions)
        assert took < 5, took
        # the next request is not affected at all
        again = await scorer.score([(iid, "fine text")])
        assert again[0].pass_rate == 1.0


def test_check_limits():
    t, iid = table(NO_COMMA)
    scorer = Scorer(t, None, RewardSettings(max_batch=2, max_chars=10))
    for items, status, needle in (([], 400, "empty batch"), ([(iid, "a")] * 3, 413, "batch of 3"),
                                  ([(iid, "a" * 11)], 413, "11 characters"),
                                  ([("x", "a")], 400, "unknown instruction id"),
                                  ([(iid, b"a")], 400, "must be a string")):
        with pytest.raises(RequestError, match=needle) as err:
            scorer.check(items)
        assert err.value.status == status
    with pytest.raises(ValueError, match="reward mode"):
        RewardSettings(mode="sum")
