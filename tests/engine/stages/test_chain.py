"""All stages chained (seed batches in, training files out) with a scripted LLM, the REAL sandbox
pool, the answer cache and the state store; a second run over the same store asks the LLM
nothing and stores no duplicate."""
import re

import orjson

from engine.cache import CachedLLM
from engine.config import Config
from engine.export import ExportOptions, export, instructions_of
from engine.records import Instruction, QueryResult, VerifiedInstruction
from engine.stage import Context, Funnel
from engine.stages import default_stages, make_seed_batches
from engine.state import StateStore
from tests.doubles import ScriptedLLM, real_pool

SEEDS = [Instruction("Do not use any commas in your reply."),
         Instruction("Write your entire reply in lowercase letters.")]
CHECKERS = {
    "Do not use any commas in your reply.": ("def evaluate(response):\n    return ',' not in response\n",
                                             [("a b", True), ("a, b", False)]),
    "Write your entire reply in lowercase letters.": ("def evaluate(response):\n    return response == response.lower()\n",
                                                      [("abc", True), ("Abc", False)]),
    "End your reply with the word done.": ("def evaluate(response):\n    return response.strip().endswith('done')\n",
                                           [("all done", True), ("done already", False)]),
}
RESPONSES = ["sure thing and that is done", "Sure, Thing", "sure, thing done", "ok done"]


def script(name, prompt, n):
    if name == "augment":
        return ["1. End your reply with the word done.\n2. Be kind to the user always."] * n
    if name == "checkable":
        return ["NO" if "kind" in prompt else "YES"]
    if name == "verifier":
        code, cases = CHECKERS[re.search(r"^Constraint: (.*)$", prompt, re.M).group(1)]
        good = orjson.dumps({"func": code, "cases": [{"input": i, "output": o} for i, o in cases]}).decode()
        return [f"```json\n{good}\n```", "sorry, no", good][:n]
    if name == "backtranslate":
        return [next(inst for inst, (code, _) in CHECKERS.items() if code.strip() in prompt)]
    if name == "nli":
        return ["entailment"]
    if name == "score":
        return ["Score: 9" if "sure thing" in prompt.split("[Reply]")[1] else "Score: 7"]
    return RESPONSES[:n]


async def run_pipeline(store: StateStore, cfg: Config) -> tuple[list[QueryResult], ScriptedLLM, Funnel]:
    scripted = ScriptedLLM(script)
    stages = default_stages(cfg, SEEDS)
    async with real_pool() as pool:
        ctx = Context(llm=CachedLLM(scripted, store), executor=pool, funnel=Funnel())
        items: list = make_seed_batches(SEEDS, cfg.augment.batches, cfg.augment.seeds_shown, cfg.run.seed)
        for stage in stages:                  # breadth-first: the runner streams, the result is the same
            ctx.funnel.count_in(stage.name, len(items))
            items = [out for item in items for out in await stage.process(item, ctx)]
            if stage.name == "backtranslate":
                store.put_records(items, stage.name)
    store.put_records(items, "final")
    return items, scripted, ctx.funnel


async def test_chain_end_to_end_and_resume(tmp_path):
    cfg = Config.from_flat(verifier_style="json", augment_batches=1, augment_seeds_shown=2, verifier_k=3, queries_per_instruction=2, responses_k=4)
    with StateStore(tmp_path / "run") as store:
        results, llm, funnel = await run_pipeline(store, cfg)
        verified = list(store.iter_records(VerifiedInstruction))
        assert sorted(v.instruction.text for v in verified) == sorted(CHECKERS)
        assert len(results) == 6                              # 3 instructions x 2 queries
        assert all(len(r.responses) == 4 for r in results)
        # one request per instruction for K verifiers, per task for K responses
        assert [llm.count(n) for n in ("augment", "verifier", "response")] == [1, 3, 6]
        assert all(c[2] == 4 for c in llm.calls if c[0] == "response")
        f = funnel.to_dict()
        assert f["augment.candidate"]["dropped"] == {"not_checkable": 1}
        assert f["verifiers.answer"]["dropped"] == {"no_json": 3}

        files = export(tmp_path / "out", instructions_of(results), results,
                       ExportOptions.from_config(cfg))
        sft = [orjson.loads(x) for x in files["sft_trl"].read_bytes().splitlines()]
        assert len(sft) == 6 and {m["messages"][1]["content"] for m in sft} == {"sure thing and that is done"}
        dpo = [orjson.loads(x) for x in files["dpo_llamafactory"].read_bytes().splitlines()]
        cases = [orjson.loads(x) for x in files["dpo_cases_llamafactory"].read_bytes().splitlines()]
        assert [d["provenance"]["level"] for d in dpo] == ["query"] * 6
        assert [d["provenance"]["level"] for d in cases] == ["instruction"] * 3
        assert {d["rejected"]["value"] for d in dpo if d["provenance"]["level"] == "query"} == {"Sure, Thing"}
        assert all(d["provenance"]["config_hash"] == cfg.config_hash() for d in dpo)
        stored = store.count_records()

    with StateStore(tmp_path / "run") as store:           # resume: same answers from the cache
        again, llm2, _ = await run_pipeline(store, cfg)
        assert llm2.calls == []
        assert sorted(r.id for r in again) == sorted(r.id for r in results)
        assert store.count_records() == stored
