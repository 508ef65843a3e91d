"""The reward service and adapters called exactly the way each trainer's own code calls them.

- verl (volcengine/verl b178a3cd56f58b2d502255daba591e92833930a7): the reward-loop managers
  call `compute_score(data_source=, solution_str=, ground_truth=, extra_info=,
  reward_router_address=, reward_model_tokenizer=)` when a reward-model router is configured
  (verl/experimental/reward_loop/reward_manager/naive.py, `run_single`), through
  `get_custom_reward_fn`'s `_call_with_kwargs`, which merges custom_reward_function.reward_kwargs
  (verl/trainer/ppo/reward.py); the batch manager calls `compute_score(data_sources=,
  solution_strs=, ground_truths=, extra_infos=, **reward_kwargs)` (verl/workers/reward_manager/batch.py).
- OpenRLHF (OpenRLHF/OpenRLHF 3c3be6234e0cb353e76bb8019947db9dfe99fca7,
  openrlhf/utils/agent.py, SingleTurnAgentExecutor): the query is
  `tokenizer.decode(prompt_ids + response_ids, skip_special_tokens=False)`, prompt_ids cut from
  the left when the prompt is too long; a refused request is retried, logged at info level and
  leaves the reward empty, so every refusal must show in /health and /metrics.
"""
import asyncio
import contextlib
import json
import urllib.error
import urllib.request
from functools import partial

import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from engine.records import Instruction, Verifier, VerifiedInstruction
from engine.reward import RequestError, RewardTable, Scorer
from engine.reward.adapters import compute_score, compute_score_batch
from engine.reward.split import MIN_TAIL, response_of
from engine.reward.service import ServiceOptions, make_app
from tests.doubles import real_pool

NO_COMMA = Verifier("def evaluate(response):\n    return ',' not in response\n")
SHORT = Verifier("def evaluate(response):\n    return len(response.split()) <= 6\n")
VI = VerifiedInstruction(Instruction("Use no commas and at most six words."), ((NO_COMMA, 1.0), (SHORT, 1.0)), ())
IID = VI.instruction.id
TABLE = RewardTable.from_instructions([VI])

CONTEXT = " ".join(f"Background sentence {n} about tea, its history and how it is brewed." for n in range(40))
USER = f"{CONTEXT}\n\nDescribe tea.\n\n{VI.instruction.text}"
LLAMA2 = f"<s>[INST] {USER} [/INST]"                                  # Llama-2 / Mistral chat template
CHATML = f"<|im_start|>user\n{USER}<|im_end|>\n<|im_start|>assistant\n"
GOOD, BAD = "Tea is warm and calm.", "Tea, as everyone knows, is a warm drink for cold days."


def sentencepiece_decoded(text: str) -> str:
    """What a SentencePiece tokenizer's decode gives back for a Llama-2 prompt: a space after
    `<s>` (the `▁[` piece keeps its space after a special token) and none before `</s>`."""
    return text.replace("<s>[INST]", "<s> [INST]").replace(" </s>", "</s>")


def left_truncated(text: str, keep: int) -> str:
    """The last `keep` characters, as a tokenizer cut from the left decodes them: the first
    character of a cut multi-byte character comes back as U+FFFD."""
    return "\ufffd" + text[-keep:]


# -- the split itself -----------------------------------------------------------------------

def test_query_decoded_with_a_space_after_bos_splits_at_the_prompt():
    query = sentencepiece_decoded(LLAMA2) + " " + GOOD + "</s>"
    assert not query.startswith(LLAMA2)
    assert response_of(query, LLAMA2) == " " + GOOD + "</s>"


def test_whitespace_moved_around_special_tokens_keeps_the_response_exact():
    decoded = CHATML.replace("<|im_end|>\n<|im_start|>", "<|im_end|> \n<|im_start|>")
    assert response_of(decoded + GOOD, CHATML) == GOOD            # the prompt's trailing \n is not the reply's


def test_left_truncated_prompt_matches_its_tail():
    for keep in (MIN_TAIL + 40, len(CHATML) // 2, len(CHATML) - 3):
        assert response_of(CHATML[-keep:] + GOOD, CHATML) == GOOD
        assert response_of(left_truncated(CHATML, keep) + GOOD, CHATML) == GOOD


def test_a_bos_the_prompt_lacks_is_skipped():
    assert response_of("<s>" + CHATML + GOOD, CHATML) == GOOD


def test_unsplittable_query_names_the_reason():
    for query in ("Something else entirely. " + GOOD,                       # another prompt
                  CHATML[-(MIN_TAIL - 10):] + GOOD,                         # too little of the tail left
                  "x" * 40 + CHATML + GOOD):                                # the prompt far inside
        with pytest.raises(RequestError, match="does not start with prompts\\[3\\]") as err:
            response_of(query, CHATML, 3)
        assert err.value.status == 400 and err.value.reason == "unsplit_query"
        assert "cannot tell where the response starts" in str(err.value)


# -- over HTTP, with the real sandbox pool ------------------------------------------------------

@contextlib.asynccontextmanager
async def service():
    async with real_pool() as pool:
        runner = web.AppRunner(make_app(Scorer(TABLE, pool), ServiceOptions()), access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            host, port = runner.addresses[0][:2]
            yield f"http://{host}:{port}"
        finally:
            await runner.cleanup()


def request(url: str, path: str, body=None) -> tuple[int, str]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"},
                                 method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def call(*args, **kwargs):
    """Block in a thread, as the trainers' clients do, so the service in this loop answers."""
    return await asyncio.to_thread(*args, **kwargs)


def sample(metrics: str, name: str, **labels: str) -> float:
    """The one value of `name` with exactly these labels in a Prometheus exposition."""
    [value] = [s.value for family in text_string_to_metric_families(metrics) for s in family.samples
               if s.name == name and s.labels == labels]
    return value


def refusals(metrics: str, route: str, reason: str) -> float:
    return sample(metrics, "autoif_reward_refusals_total", route=route, reason=reason)


async def test_get_reward_survives_tokenizer_round_trips_and_truncation():
    async with service() as url:
        queries = [sentencepiece_decoded(LLAMA2) + " " + GOOD + "</s>",
                   sentencepiece_decoded(LLAMA2) + " " + BAD + "</s>",
                   left_truncated(CHATML, 200) + GOOD + "<|im_end|>",
                   left_truncated(CHATML, 200) + BAD + "<|im_end|>"]
        body = {"query": queries, "prompts": [LLAMA2, LLAMA2, CHATML, CHATML], "labels": [IID] * 4}
        status, text = await call(request, url, "/get_reward", body)
        assert status == 200, text
        # " Tea is warm and calm." passes both; the long reply with commas passes neither
        assert json.loads(text)["rewards"] == [1.0, 0.0, 1.0, 0.0]


async def test_unsplittable_query_is_refused_and_counted():
    async with service() as url:
        _, health = await call(request, url, "/health")
        assert json.loads(health)["refused"]["unsplit_query"] == 0
        _, metrics = await call(request, url, "/metrics")
        assert refusals(metrics, "/get_reward", "unsplit_query") == 0
        body = {"query": ["<|im_start|>user\nanother prompt<|im_end|>\n" + GOOD], "prompts": [CHATML],
                "labels": [IID]}
        for attempt in (1, 2):                                   # a trainer retrying the same request
            status, text = await call(request, url, "/get_reward", body)
            assert status == 400 and len(text.splitlines()) == 1
            assert "does not start with prompts[0]" in json.loads(text)["error"]
            health = json.loads((await call(request, url, "/health"))[1])
            assert health["refused"]["unsplit_query"] == attempt and health["refused_total"] == attempt
            _, metrics = await call(request, url, "/metrics")
            assert refusals(metrics, "/get_reward", "unsplit_query") == attempt
        assert sample(metrics, "autoif_reward_requests_total", route="/get_reward", status="400") == 2
        # other reasons have their own count
        status, _ = await call(request, url, "/score", {"items": [{"instruction_id": "nope", "completion": "x"}]})
        health = json.loads((await call(request, url, "/health"))[1])
        assert status == 400 and health["refused"]["unknown_instruction"] == 1
        assert health["refused"]["unsplit_query"] == 2 and health["refused_total"] == 3


# -- verl's calls, word for word ----------------------------------------------------------------

def _call_with_kwargs(raw_fn, extra_kwargs, *args, **kwargs):
    """verl/trainer/ppo/reward.py at b178a3cd: reward_kwargs win over the call's own."""
    merged_kwargs = {**kwargs, **extra_kwargs}
    return raw_fn(*args, **merged_kwargs)


async def test_compute_score_takes_verl_reward_loop_keywords():
    async with service() as url:
        # get_custom_reward_fn: partial(_call_with_kwargs, raw_fn, reward_kwargs)
        fn = partial(_call_with_kwargs, compute_score, {"url": url})
        extra_info = {"num_turns": None, "rollout_reward_scores": {}}
        # NaiveRewardManager.run_single with a reward-model router configured
        # (verl/experimental/reward_loop/reward_manager/naive.py at b178a3cd)
        extra_reward_kwargs = {"reward_router_address": "127.0.0.1:30000", "reward_model_tokenizer": object()}
        good = await call(lambda: fn(data_source="autoif", solution_str=GOOD, ground_truth=IID,
                                     extra_info=extra_info, **extra_reward_kwargs))
        bad = await call(lambda: fn(data_source="autoif", solution_str=BAD, ground_truth=IID,
                                    extra_info=extra_info, **extra_reward_kwargs))
        assert (good, bad) == (1.0, 0.0)
        # BatchRewardManager.verify (verl/workers/reward_manager/batch.py at b178a3cd)
        batch = partial(_call_with_kwargs, compute_score_batch, {"url": url})
        scores = await call(lambda: batch(data_sources=["autoif", "autoif"], solution_strs=[GOOD, BAD],
                                          ground_truths=[IID, IID],
                                          extra_infos=[{"rollout_reward_scores": {}}] * 2))
        assert scores == [1.0, 0.0]
