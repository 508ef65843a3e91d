"""The reward service scores composed prompts: a label may be a list of instruction ids in every
dialect (native, OpenRLHF, NeMo Gym, and the TRL and verl adapters' requests); the answer carries
one verdict per constraint and the combined reward. The real app over the real pool."""
import json

import numpy as np
from aiohttp.test_utils import TestClient, TestServer

from engine.records import Case, Instruction, VerifiedInstruction, Verifier
from engine.reward.adapters import _request, trl_reward_func
from engine.reward.scorer import RewardSettings, RewardTable, Scorer
from engine.reward.service import make_app
from tests.doubles import real_pool

LOWER = VerifiedInstruction(Instruction("Write in lowercase."),
                            ((Verifier("def evaluate(r):\n    return r == r.lower()\n"), 1.0),), (Case("a", True),))
HELLO = VerifiedInstruction(Instruction("Start with Hello."),
                            ((Verifier("def evaluate(r):\n    return r.lower().startswith('hello')\n"), 1.0),),
                            (Case("Hello", True),))
SHORT = VerifiedInstruction(Instruction("Use fewer than 5 words."),
                            ((Verifier("def evaluate(r):\n    return len(r.split()) < 5\n"), 1.0),), (Case("a", True),))
IDS = [v.instruction.id for v in (LOWER, HELLO, SHORT)]
TABLE = RewardTable.from_instructions([LOWER, HELLO, SHORT])
TEMPLATE = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"


async def client(combine: str = "fraction") -> tuple[TestClient, object]:
    pool = real_pool()
    await pool.__aenter__()
    c = TestClient(TestServer(make_app(Scorer(TABLE, pool, RewardSettings(combine=combine)))))
    await c.start_server()
    return c, pool


async def test_list_labels_in_every_dialect():
    c, pool = await client()
    try:
        # native: all three met; two of three; a plain id keeps its old answer
        body = {"items": [{"instruction_id": IDS, "completion": "hello there"},
                          {"instruction_ids": IDS, "completion": "Hello there"},
                          {"instruction_id": IDS[0], "completion": "hello"}]}
        res = await (await c.post("/score", json=body)).json()
        assert res["rewards"] == [1.0, 2 / 3, 1.0]
        first, second, plain = res["results"]
        assert [v["passed"] for v in second["constraints"]] == [False, True, True]
        assert [v["instruction_id"] for v in first["constraints"]] == IDS
        assert "constraints" not in plain and len(first["functions"]) == 3
        # OpenRLHF: a list label, and one JSON-encoded in a string column
        prompts = [TEMPLATE.format("Say hi.")] * 2
        queries = [p + t + "<|im_end|>" for p, t in zip(prompts, ["hello there", "Hello there, my good friend"])]
        res = await (await c.post("/get_reward", json={"query": queries, "prompts": prompts,
                                                       "labels": [IDS, json.dumps(IDS)]})).json()
        assert res["rewards"] == [1.0, 1 / 3]
        assert res["extra_logs"]["constraints_met"] == [[True, True, True], [False, True, False]]
        # NeMo Gym: the follow list is per constraint
        nemo = {"instruction_id": IDS[:2], "response": {"output": [
            {"type": "message", "content": [{"type": "output_text", "text": "Hello"}]}]}}
        res = await (await c.post("/verify", json=nemo)).json()
        assert res["follow_instruction_list"] == [False, True] and res["reward"] == 0.5
        assert not res["follow_all_instructions"] and len(res["constraints"]) == 2
        # TRL: a composing run's rows have an instruction_ids column, which wins over instruction_id
        reward = trl_reward_func(str(c.make_url("/")).rstrip("/"))
        assert await reward(completions=[[{"role": "assistant", "content": "Hello there"}]],
                            instruction_id=[IDS[0]], instruction_ids=[IDS]) == [2 / 3]
        # bad lists are refused in one line
        bad = await c.post("/score", json={"items": [{"instruction_id": [], "completion": "x"}]})
        assert bad.status == 400 and "list of 1 to" in (await bad.json())["error"]
        bad = await c.post("/score", json={"items": [{"instruction_id": [IDS[0], "nope"], "completion": "x"}]})
        assert bad.status == 400 and "unknown instruction id" in (await bad.json())["error"]
    finally:
        await c.close()
        await pool.__aexit__(None, None, None)


async def test_all_or_nothing_combine():
    c, pool = await client("all")
    try:
        res = await (await c.post("/score", json={"items": [{"instruction_id": IDS, "completion": "Hello there"},
                                                            {"instruction_id": IDS, "completion": "hello"}]})).json()
        assert res["rewards"] == [0.0, 1.0]
    finally:
        await c.close()
        await pool.__aexit__(None, None, None)


def test_trl_and_verl_requests_carry_the_list():
    # verl reads a Parquet list column as an array; TRL passes the dataset's instruction_ids lists
    body = _request([np.array(IDS), IDS[0], IDS[:2]], ["a", "b", "c"])
    assert [i["instruction_id"] for i in body["items"]] == [IDS, IDS[0], IDS[:2]]
