"""`autoif serve-reward` on a simulator run: every dialect scores the run's own exports the way
the pipeline judged them, bad requests get one-line 4xx answers, and a hostile completion
leaves the next request's reward right.

The run is the scripted AutoIF model of tests/fixtures/autoif_e2e.py on the SGLang simulator
(a test double); the service is the real CLI in a subprocess with the real sandbox pool.
"""
import asyncio
import json
import os
import select
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from engine.config import Config
from engine.job import run_job
from engine.reward.adapters import RewardServiceError, compute_score, compute_score_batch, trl_reward_func
from engine.sim.config import LatencyModel, SimConfig
from engine.sim.server import SimServer
from tests.fixtures import autoif_e2e as fx

ROOT = Path(__file__).resolve().parents[3]
KEY = "test-key"
THRESHOLD = 0.5                      # the pipeline's pass_threshold (the Config default)
MAX_BATCH, MAX_CHARS = 64, 100_000
TEMPLATE = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"   # a chat template, as OpenRLHF renders


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reward")

    async def make() -> None:
        sim_cfg = SimConfig(responder="tests.fixtures.autoif_e2e:respond",
                            latency=LatencyModel(zero_latency=True))
        async with SimServer(sim_cfg) as sim:
            cfg = Config.from_flat(**fx.JOB, **fx.write_inputs(root / "inputs"), servers=[sim.url],
                                   output_dir=str(root / "run"))
            summary = await run_job(cfg, progress=False)
            assert summary["stopped"] == "completed"

    asyncio.run(make())
    return root / "run"


@pytest.fixture(scope="module")
def service(run_dir):
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "serve-reward", str(run_dir), "--port", "0",
         "--api-key", KEY, "--max-batch", str(MAX_BATCH), "--max-chars", str(MAX_CHARS),
         "--pool-workers", "2", "--pool-timeout", "1"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "serve-reward printed no URL within 60 s"
        url = proc.stdout.readline().strip()
        assert url.startswith("http://"), (url, proc.stderr.read() if proc.poll() is not None else "")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        assert proc.returncode == 0, proc.stderr.read()[-2000:]


def post(url: str, path: str, body=None, *, raw: bytes | None = None, key: str | None = KEY):
    """(status, body text) of one POST."""
    data = raw if raw is not None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url + path, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def score(url: str, pairs: list[tuple[str, str]]) -> list[float]:
    status, text = post(url, "/score", {"items": [{"instruction_id": i, "completion": c} for i, c in pairs]})
    assert status == 200, text
    return json.loads(text)["rewards"]


def exported(run_dir: Path):
    """(instruction id, prompt, SFT response) and (instruction id, prompt, chosen, rejected) rows."""
    sft = [(r["provenance"]["instruction_id"], r["messages"][0]["content"], r["messages"][1]["content"])
           for r in read_jsonl(run_dir / "exports" / "sft_trl.jsonl")]
    dpo = [(r["provenance"]["instruction_id"], r["prompt"][0]["content"], r["chosen"][0]["content"],
            r["rejected"][0]["content"])
           for stem in ("dpo_trl", "dpo_cases_trl")        # query-level pairs, then case pairs
           for r in read_jsonl(run_dir / "exports" / f"{stem}.jsonl")]
    assert len(sft) == 4 and len(dpo) == 9          # what tests/engine/commands/test_run_e2e.py derives
    return sft, dpo


def test_native_scores_sft_and_dpo(service, run_dir):
    sft, dpo = exported(run_dir)
    rewards = score(service, [(i, c) for i, _, c in sft])
    assert all(r >= THRESHOLD for r in rewards), rewards
    chosen = score(service, [(i, c) for i, _, c, _ in dpo])
    rejected = score(service, [(i, r) for i, _, _, r in dpo])
    assert all(c >= THRESHOLD and r < c for c, r in zip(chosen, rejected)), (chosen, rejected)
    # the per-function verdicts name the instruction's kept functions
    iid, _, text = sft[0]
    status, body = post(service, "/score", {"items": [{"instruction_id": iid, "completion": text}]})
    [result] = json.loads(body)["results"]
    assert status == 200 and result["functions"] and all(f["passed"] for f in result["functions"])
    assert {f["status"] for f in result["functions"]} == {"ok"}


def test_openrlhf_get_reward(service, run_dir):
    _, dpo = exported(run_dir)
    prompts = [TEMPLATE.format(p) for _, p, _, _ in dpo] * 2
    # OpenRLHF sends prompt + response decoded with the end-of-turn token
    queries = ([TEMPLATE.format(p) + c + "<|im_end|>" for _, p, c, _ in dpo]
               + [TEMPLATE.format(p) + r for _, p, _, r in dpo])
    labels = [i for i, _, _, _ in dpo] * 2
    status, text = post(service, "/get_reward", {"query": queries, "prompts": prompts, "labels": labels})
    assert status == 200, text
    body = json.loads(text)
    n = len(dpo)
    chosen, rejected = body["rewards"][:n], body["rewards"][n:]
    assert all(c >= THRESHOLD and r < c for c, r in zip(chosen, rejected)), body
    assert body["scores"] == body["rewards"] and len(body["extra_logs"]["function_pass_rate"]) == 2 * n
    # the same numbers as the native endpoint
    assert chosen == score(service, [(i, c) for i, _, c, _ in dpo])
    # the key may come in the URL (OpenRLHF's client sends no headers of its own)
    status, _ = post(service, f"/get_reward?api_key={KEY}", {"query": queries[:1], "prompts": prompts[:1],
                                                            "labels": labels[:1]}, key=None)
    assert status == 200


def nemo_body(iid: str, prompt: str, text: str) -> dict:
    return {"instruction_id": iid,
            "responses_create_params": {"input": [{"role": "user", "content": prompt}]},
            "response": {"id": "resp_1", "output": [
                {"type": "reasoning", "summary": []},
                {"type": "message", "role": "assistant",
                 "content": [{"type": "output_text", "text": text, "annotations": []}]}]}}


def test_nemo_gym_verify(service, run_dir):
    _, dpo = exported(run_dir)
    for iid, prompt, chosen, rejected in dpo:
        status, text = post(service, "/verify", nemo_body(iid, prompt, chosen))
        good = json.loads(text)
        assert status == 200 and good["reward"] >= THRESHOLD and good["follow_instruction_list"]
        assert good["responses_create_params"]["input"][0]["content"] == prompt   # the body comes back
        status, text = post(service, "/verify", nemo_body(iid, prompt, rejected))
        bad = json.loads(text)
        assert status == 200 and bad["reward"] < good["reward"] and not bad["follow_all_instructions"]
        assert len(bad["follow_instruction_list"]) == len(bad["function_ids"])


async def test_trl_adapter(service, run_dir):
    sft, dpo = exported(run_dir)
    reward = trl_reward_func(service, api_key=KEY)
    assert asyncio.iscoroutinefunction(reward)            # TRL awaits it (its async branch)
    completions = [[{"role": "assistant", "content": c}] for _, _, c, _ in dpo]
    completions += [[{"role": "assistant", "content": r}] for _, _, _, r in dpo]
    ids = [i for i, _, _, _ in dpo] * 2
    # what GRPOTrainer passes: prompts, completions, completion_ids and the dataset's columns
    rewards = await reward(prompts=[[{"role": "user", "content": p}] for _, p, _, _ in dpo] * 2,
                           completions=completions, completion_ids=[[1, 2]] * len(ids),
                           instruction_id=ids, pass_rate=[0.5] * len(ids), trainer_state=None)
    n = len(dpo)
    assert all(c >= THRESHOLD and r < c for c, r in zip(rewards[:n], rewards[n:])), rewards
    assert await reward(completions=[c for _, _, c in sft], instruction_id=[i for i, _, _ in sft]) == \
        score(service, [(i, c) for i, _, c in sft])
    with pytest.raises(ValueError, match="instruction_id"):
        await reward(completions=["x"])
    with pytest.raises(RewardServiceError, match="401"):
        await trl_reward_func(service)(completions=["x"], instruction_id=[ids[0]])


def test_verl_adapter(service, run_dir):
    _, dpo = exported(run_dir)
    iid, _, chosen, rejected = dpo[0]
    good = compute_score("autoif", chosen, iid, {"index": 0}, url=service, api_key=KEY)
    bad = compute_score("autoif", rejected, iid, None, url=service, api_key=KEY)
    assert good >= THRESHOLD and bad < good
    batch = compute_score_batch(["autoif"] * 2, [chosen, rejected], [iid, iid], [None, None],
                                url=service, api_key=KEY)
    assert batch == [good, bad]
    with pytest.raises(RewardServiceError, match="unknown instruction id"):
        compute_score("autoif", chosen, "no-such-id", url=service, api_key=KEY)


def one_line_error(status: int, text: str, expected_status: int, needle: str) -> None:
    assert status == expected_status, (status, text)
    assert len(text.splitlines()) == 1, text
    assert needle in json.loads(text)["error"], text


def test_malformed_requests(service, run_dir):
    sft, _ = exported(run_dir)
    iid, _, good = sft[0]
    item = {"instruction_id": iid, "completion": good}
    one_line_error(*post(service, "/score", raw=b"{not json"), 400, "not JSON")
    one_line_error(*post(service, "/score", [item]), 400, "JSON object")
    one_line_error(*post(service, "/score", {"items": "x"}), 400, "items must be a list")
    one_line_error(*post(service, "/score", {"items": [{"instruction_id": 7, "completion": "x"}]}),
                   400, "instruction_id must be a str")
    one_line_error(*post(service, "/score", {"items": [{"instruction_id": iid, "completion": None}]}),
                   400, "completion must be a str")
    one_line_error(*post(service, "/score", {"items": []}), 400, "empty batch")
    one_line_error(*post(service, "/score", {"items": [{**item, "instruction_id": "nope"}]}),
                   400, "unknown instruction id")
    one_line_error(*post(service, "/score", {"items": [item] * (MAX_BATCH + 1)}), 413, "batch of 65")
    one_line_error(*post(service, "/score", {"items": [{**item, "completion": "a" * 10_000_000}]}),
                   413, "completion of 10000000 characters")
    one_line_error(*post(service, "/score", {"items": [item]}, key="wrong"), 401, "API key")
    one_line_error(*post(service, "/get_reward", {"query": ["a"], "prompts": ["b"], "labels": [iid]}),
                   400, "does not start with")
    one_line_error(*post(service, "/get_reward", {"query": ["a"], "prompts": [], "labels": []}),
                   400, "differ in length")
    one_line_error(*post(service, "/verify", {"instruction_id": iid, "response": {"output": 3}}),
                   400, "output must be a list")
    # and the service still answers right after all of that
    assert score(service, [(iid, good)]) == [1.0]


def test_hostile_completion_leaves_the_next_reward_right(service, run_dir):
    sft, dpo = exported(run_dir)
    pairs = [(i, c) for i, _, c in sft] + [(i, r) for i, _, _, r in dpo]
    before = score(service, pairs)
    iid = sft[0][0]
    hostile = [
        "__import__('os').system('touch /tmp/autoif_reward_pwned')",     # text, never code
        "\x00" * 1000 + "\udfff".encode("utf-8", "surrogatepass").decode("utf-8", "replace"),
        ",".join(["x"] * 49_000),                                          # just under the limit
        "\u202e" * 5000 + "done",
    ]
    status, _ = post(service, "/score", {"items": [{"instruction_id": iid, "completion": h} for h in hostile]})
    assert status == 200
    status, _ = post(service, "/score", raw=b'{"items": [{"instruction_id": "%s", "completion": "\\ud800"}]}'
                     % iid.encode())
    assert status in (200, 400)                      # a lone surrogate: scored or refused, never a crash
    assert score(service, pairs) == before
    assert not Path("/tmp/autoif_reward_pwned").exists()


def test_health_counts(service):
    with urllib.request.urlopen(service + "/health", timeout=10) as resp:
        body = json.loads(resp.read())
    # 3 verified instructions with 5 functions, 4 of them flagged by the audit (test_run_e2e)
    assert (body["instructions"], body["functions"], body["flagged"]) == (3, 5, 4)
    assert body["scored"] > 0 and body["mode"] == "rate"
