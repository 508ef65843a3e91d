"""Importable reward functions for trainers that call Python rather than a URL, both speaking
to a running `autoif serve-reward` (its native POST /score), so the trainer process holds no
sandbox and the verifiers run where the service runs.

TRL (GRPOTrainer(reward_funcs=[...])): TRL calls a reward function as
`f(prompts=..., completions=..., completion_ids=..., **dataset_columns)` (plus trainer_state,
log_extra, log_metric) and awaits it when it is a coroutine function (huggingface/trl
f2cd57710ae345ea6428ae95363267fcf38a3dc8, trl/trainer/grpo_trainer.py, `_calculate_rewards`);
completions are strings, or lists of messages for chat datasets. `trl_reward_func(url)` returns
such an `async def`; the dataset's `instruction_id` column (grpo_prompts.jsonl has it) says which
instruction each completion answers, and where the dataset has an `instruction_ids` column (a
composing run's files), that list says which constraints it answers.

verl (custom_reward_function.path / .name), read at volcengine/verl
b178a3cd56f58b2d502255daba591e92833930a7: its reward-loop managers
(verl/experimental/reward_loop/reward_manager/naive.py, dapo.py, limited.py, remote.py) call
`compute_score(data_source=, solution_str=, ground_truth=, extra_info=)` per sample, adding
`reward_router_address=` and `reward_model_tokenizer=` when a reward-model router is configured;
verl/trainer/ppo/reward.py (`get_custom_reward_fn`) merges custom_reward_function.reward_kwargs
into every call. The legacy batch manager (verl/workers/reward_manager/batch.py, with
reward_model.use_reward_loop=False) calls `compute_score(data_sources=, solution_strs=,
ground_truths=, extra_infos=, **reward_kwargs)`. Keyword arguments neither function knows are
accepted and ignored, so a newer verl that passes more still gets a reward. ground_truth is the
instruction id, or a composed prompt's list of them (the GRPO files' reward_model.ground_truth;
a list column reaches verl as an array, sent on as a list). The service URL comes from
reward_kwargs (`url=`) or AUTOIF_REWARD_URL.
"""
from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any, Awaitable, Callable, Sequence

import aiohttp

ENV_URL, ENV_KEY = "AUTOIF_REWARD_URL", "AUTOIF_REWARD_API_KEY"


class RewardServiceError(RuntimeError):
    """The reward service refused a request or could not be reached (one line)."""


def completion_text(completion: Any) -> str:
    """A TRL completion as text: a string, or the last assistant message of a chat completion."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        for message in reversed(completion):
            if isinstance(message, dict) and message.get("role", "assistant") == "assistant":
                content = message.get("content", "")
                return content if isinstance(content, str) else ""
    raise TypeError(f"cannot read a completion of type {type(completion).__name__}")


def _label(ground_truth: Any) -> Any:
    """An instruction id, or a list of them (from an array-like column, e.g. numpy's)."""
    if isinstance(ground_truth, str) or not hasattr(ground_truth, "__iter__"):
        return ground_truth
    return [str(x) for x in ground_truth]


def _request(ids: Sequence[Any], texts: Sequence[str]) -> dict:
    return {"items": [{"instruction_id": _label(i), "completion": t} for i, t in zip(ids, texts)]}


def _headers(api_key: str | None) -> dict:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _score_url(url: str) -> str:
    return url.rstrip("/") + "/score"


def trl_reward_func(url: str, *, api_key: str | None = None, column: str = "instruction_id",
                    timeout_s: float = 600.0) -> Callable[..., Awaitable[list[float]]]:
    """An async TRL reward function scoring completions against the service at `url`."""

    async def autoif_reward(completions: Sequence[Any], **kwargs: Any) -> list[float]:
        ids = kwargs.get("instruction_ids") if column == "instruction_id" and "instruction_ids" in kwargs \
            else kwargs.get(column)
        if ids is None:
            raise ValueError(f"no {column!r} column reached the reward function; "
                             "train on grpo_prompts.jsonl (or a dataset with that column)")
        texts = [completion_text(c) for c in completions]
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.post(_score_url(url), json=_request(ids, texts),
                                    headers=_headers(api_key)) as resp:
                body = await resp.json(content_type=None)
                if resp.status != 200:
                    raise RewardServiceError(f"reward service {resp.status}: {body.get('error', body)}")
        return [float(r) for r in body["rewards"]]

    return autoif_reward


def _post(url: str, payload: dict, api_key: str | None, timeout_s: float) -> dict:
    req = urllib.request.Request(_score_url(url), data=json.dumps(payload).encode(), method="POST",
                                 headers={"Content-Type": "application/json", **_headers(api_key)})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise RewardServiceError(f"reward service {exc.code}: {exc.read().decode(errors='replace')}") from None
    except urllib.error.URLError as exc:
        raise RewardServiceError(f"reward service at {url} unreachable: {exc.reason}") from None


def _where(url: str | None, api_key: str | None) -> tuple[str, str | None]:
    url = url or os.environ.get(ENV_URL)
    if not url:
        raise RewardServiceError(f"no reward service URL: pass url= (reward_kwargs) or set {ENV_URL}")
    return url, api_key or os.environ.get(ENV_KEY)


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: Any = None, *,
                  url: str | None = None, api_key: str | None = None, timeout_s: float = 600.0,
                  **ignored: Any) -> float:
    """verl's per-sample reward: `ground_truth` is the instruction id. `ignored` takes what else
    verl passes (reward_router_address, reward_model_tokenizer): the service needs none of it."""
    url, api_key = _where(url, api_key)
    return float(_post(url, _request([ground_truth], [solution_str]), api_key, timeout_s)["rewards"][0])


def compute_score_batch(data_sources: Sequence[str], solution_strs: Sequence[str],
                        ground_truths: Sequence[Any], extra_infos: Sequence[Any] | None = None, *,
                        url: str | None = None, api_key: str | None = None,
                        timeout_s: float = 600.0, **ignored: Any) -> list[float]:
    """verl's batch reward manager form: one request for the whole batch; `ignored` as in
    compute_score."""
    url, api_key = _where(url, api_key)
    return [float(r) for r in _post(url, _request(ground_truths, solution_strs), api_key, timeout_s)["rewards"]]
