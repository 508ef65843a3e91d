"""The embedded model writes verifiers that survive cross-validation and agree with IFEval's
official checkers: the real llama-server, the real stages and sandbox pool, no double.

Small on purpose (two constraints, K=4 functions, three short case answers; about two minutes
on 2 cores). Skipped, with the reason, when the `embedded` extra is not installed.
"""
from __future__ import annotations

import os

import pytest

from bench.quality import CONSTRAINTS, ifbench_probes, official_checker
from engine.client import LLMClient
from engine.config import Config
from engine.records import Instruction
from engine.servers import default_embedded_server, embedded_available
from engine.stage import Context, Funnel
from engine.stages import build_stage
from sandbox_pool import SandboxPool

EMBEDDED_OK, EMBEDDED_WHY = embedded_available()
# Opt-in: with the 0.5B embedded model, whether any verifier survives cross-validation depends on
# sampling (its test cases are often one-sided), so the default suite cannot rely on it passing.
# Run it with AUTOIF_REALMODEL_QUALITY=1.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300),
              pytest.mark.skipif(not EMBEDDED_OK, reason=f"embedded llama.cpp unavailable: {EMBEDDED_WHY}"),
              pytest.mark.skipif(os.environ.get("AUTOIF_REALMODEL_QUALITY") != "1",
                                 reason="opt-in (AUTOIF_REALMODEL_QUALITY=1): its outcome depends on the small model's sampling")]

# keyword constraints: the ones whose failing replies the 0.5B model writes most often
CHOSEN = [c for c in CONSTRAINTS if c.checker == "keywords:existence"]
OWN_PROBES = ["The river was calm and a lantern glowed on the bank.", "A lantern hung by the door.",
              "We walked along the river at dusk.", "Our budget for the trip is small.",
              "Nothing here mentions either word."]


async def test_embedded_verifiers_survive_crossval_and_agree_with_ifeval(tmp_path):
    probes = OWN_PROBES + ifbench_probes()[:5]
    cfg = Config(verifier_k=4, verifier_case_samples=3, verifier_cases_per_side=3,
                 verifier_max_tokens=160, verifier_case_max_tokens=400)
    agreeing: dict[str, list[str]] = {}
    async with default_embedded_server(tmp_path, parallel=4) as srv, \
            LLMClient([srv.url], model=srv.model, api="openai") as client, \
            SandboxPool(workers=2, timeout_s=2.0) as pool:
        ctx = Context(llm=client, executor=pool, funnel=Funnel())
        verifiers, crossval = build_stage("verifiers", cfg), build_stage("crossval", cfg)
        for c in CHOSEN:
            drafts = await verifiers.process(Instruction(c.text), ctx)
            verified = [v for d in drafts for v in await crossval.process(d, ctx)]
            if not verified:
                continue
            checker = official_checker(c)
            official = [bool(checker.check_following(p)) for p in probes]
            codes = [f.code for f, _ in verified[0].functions]
            results = await pool.evaluate_many([(code, probes) for code in codes])
            agreeing[c.text] = [code for code, res in zip(codes, results)
                                if [o.status == "ok" and o.value is True for o in res] == official]
    funnel = ctx.funnel.to_dict()
    assert funnel["verifiers.answer"]["kept"] > 0, funnel
    assert any(agreeing.values()), (agreeing, funnel)
