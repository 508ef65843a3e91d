"""The embedded model writes verifiers that survive cross-validation and agree with IFEval's
official checkers: the real llama-server, the real stages and sandbox pool, no double.

Small on purpose (three constraints, K=4 functions, cases from three queries; one to two
minutes on 2 cores a round). Sampling is not seeded, so a round can keep nothing: CI once saw
every function of one round fall to one-sided cases. The claim is about the model, not one
draw, so the test tries up to ROUNDS fresh rounds and stops at the first constraint that agrees.
Skipped, with the reason, when the `embedded` extra is not installed.
"""
from __future__ import annotations

import asyncio

import pytest

from bench.quality import CONSTRAINTS, ifbench_probes, official_checker
from engine.client import LLMClient
from engine.config import Config
from engine.records import Instruction
from engine.servers import embedded_available
from engine.stage import Context, Funnel
from engine.stages import CrossValStage, VerifierStage, load_queries
from sandbox_pool import Limits, PoolConfig, SandboxPool

EMBEDDED_OK, EMBEDDED_WHY = embedded_available()
ROUNDS = 3
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900),
              pytest.mark.skipif(not EMBEDDED_OK, reason=f"embedded llama.cpp unavailable: {EMBEDDED_WHY}")]

# Constraints whose cases the 0.5B model writes on both sides (measured: its replies obey them
# often enough, and a plain reply breaks them). Any one surviving is enough: which ones do
# varies with sampling (each alone survived in some runs and not in others).
# The seed file has more phrasings of these checkers; the measured ones are these.
MEASURED = ("Do not use any commas in your reply.",
            "Write your whole reply in lowercase letters and use no capital letters at all.",
            "Keep your reply under 60 words.", "Write at least 120 words.")
CHOSEN = [c for c in CONSTRAINTS if c.text in MEASURED and c.checker in (
    "punctuation:no_comma", "change_case:english_lowercase", "length_constraints:number_words")]
assert len(CHOSEN) == len(MEASURED), "bench/quality_seeds.jsonl lost a measured phrasing"
OWN_PROBES = ["the river was calm and a lantern glowed on the bank", "A lantern hung by the door, unlit.",
              "We walked along the river at dusk.", "our budget, sadly, is small",
              "nothing here has a capital letter or a comma"]


async def _round(ctx: Context, pool: SandboxPool, cfg: Config, probes: list[str]) -> dict[str, list[str]]:
    """One draw: verifiers and cross-validation for each chosen constraint; for each survivor,
    its kept functions that give the official checker's verdict on every probe."""
    verifiers, crossval = VerifierStage.from_config(cfg, load_queries()), CrossValStage.from_config(cfg)

    async def one(c) -> list[str] | None:
        drafts = await verifiers.process(Instruction(c.text), ctx)
        verified = [v for d in drafts for v in await crossval.process(d, ctx)]
        if not verified:
            return None
        checker = official_checker(c)
        official = [bool(checker.check_following(p)) for p in probes]
        codes = [f.code for f, _ in verified[0].functions]
        results = await pool.evaluate_many([(code, probes) for code in codes])
        return [code for code, res in zip(codes, results)
                if [o.status == "ok" and o.value is True for o in res] == official]

    # every constraint at once, as a run asks them (the server's slots are shared between them);
    # the round ends at the first constraint with an agreeing function, the claim's evidence
    async def named(c):
        return c.text, await one(c)

    tasks = [asyncio.ensure_future(named(c)) for c in CHOSEN]
    found: dict[str, list[str]] = {}
    try:
        for done in asyncio.as_completed(tasks):
            text, codes = await done
            if codes is not None:
                found[text] = codes
            if any(found.values()):
                break
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return found


async def test_embedded_verifiers_survive_crossval_and_agree_with_ifeval(embedded_llama):
    probes = OWN_PROBES + ifbench_probes()[:5]
    cfg = Config.from_flat(verifier_k=4, verifier_case_samples=3, verifier_max_tokens=160, verifier_case_max_tokens=200)
    tried: list[tuple[dict, dict]] = []
    srv = embedded_llama
    async with LLMClient([srv.url], model=srv.model, api="openai") as client, \
            SandboxPool(PoolConfig(workers=2, limits=Limits(timeout_s=2.0))) as pool:
        for _ in range(ROUNDS):
            ctx = Context(llm=client, executor=pool, funnel=Funnel())
            agreeing = await _round(ctx, pool, cfg, probes)
            funnel = ctx.funnel.to_dict()
            assert funnel["verifiers.answer"]["kept"] > 0, funnel
            tried.append((agreeing, funnel))
            if any(agreeing.values()):
                break
    print(f"rounds used: {len(tried)} of {ROUNDS}")
    assert any(agreeing.values()), tried
