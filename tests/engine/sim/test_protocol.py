"""Protocol conformance: the simulator's and the client's field names against SGLang's source.

The reference lists below were copied by hand from sgl-project/sglang (file @ commit read):
  [io]   python/sglang/srt/managers/io_struct.py            @ 001067fffe33427bee0ed2f007fb7551a1d76b44
  [sp]   python/sglang/srt/sampling/sampling_params.py      @ 00c17cafcb9e289d5ca97c50e44ada54e4fd5b03
  [tm]   python/sglang/srt/managers/tokenizer_manager.py    @ 001067fffe33427bee0ed2f007fb7551a1d76b44
  [http] python/sglang/srt/entrypoints/http_server.py       @ 0025436eab0556737d615b36a4dd3e1e26e82f3d
  [oai]  python/sglang/srt/entrypoints/openai/protocol.py   @ 004c82e07d876f6e4a0ad6e15325706b0f478f1a
  [base] python/sglang/srt/entrypoints/openai/serving_base.py @ c5695a4be1c4f84791eeaceeb6e4a775f8e7d0cc
  [met]  python/sglang/srt/metrics/collector.py             @ 93d04878cfb9b08645fae7b11bd340ee33b34acf
  [sb]   python/sglang/srt/managers/schedule_batch.py: FINISH_MATCHED_STR / FINISH_LENGTH / FINISH_ABORT .to_json()
When SGLang itself is importable, its pydantic request models also validate the client's
bodies (skipped otherwise; sglang is not a dependency of this project).
"""
from __future__ import annotations

import importlib.util

import aiohttp
import orjson
import pytest

from engine.client import LLMClient
from engine.llm import SamplingParams
from engine.sim import LatencyModel, SimConfig, SimServer

# [io] GenerateReqInput: the request-facing fields
GENERATE_REQ_INPUT = {
    "rid", "session_id", "text", "input_ids", "input_embeds", "image_data", "video_data",
    "audio_data", "sampling_params", "return_logprob", "logprob_start_len", "top_logprobs_num",
    "token_ids_logprob", "return_text_in_logprobs", "stream", "log_metrics",
    "return_hidden_states", "modalities", "session_params", "lora_path", "lora_id",
    "custom_logit_processor", "bootstrap_host", "bootstrap_port", "bootstrap_room",
    "routed_dp_rank", "data_parallel_rank", "routing_key", "conversation_id", "background",
    "priority", "extra_key", "no_logs", "custom_labels", "return_bytes", "return_entropy",
}
# [sp] SamplingParams: the API parameters (internal fields excluded)
SAMPLING_PARAMS = {
    "max_new_tokens", "stop", "stop_token_ids", "stop_regex", "temperature", "top_p", "top_k",
    "min_p", "frequency_penalty", "presence_penalty", "repetition_penalty", "min_new_tokens",
    "n", "json_schema", "regex", "ebnf", "structural_tag", "ignore_eos", "skip_special_tokens",
    "spaces_between_special_tokens", "no_stop_trim", "custom_params", "stream_interval",
    "logit_bias", "sampling_seed",
}
# [tm] _handle_batch_output: meta_info of a finished, non-logprob, non-metrics request
META_INFO = {"id", "finish_reason", "prompt_tokens", "weight_version", "num_retractions",
             "reasoning_tokens", "completion_tokens", "cached_tokens", "e2e_latency"}
NATIVE_ITEM = {"text", "output_ids", "meta_info"}
# [http] /get_model_info
MODEL_INFO = {"model_path", "tokenizer_path", "is_generation", "preferred_sampling_params",
              "weight_version"}
# [oai] CompletionRequest
COMPLETION_REQUEST = {
    "model", "prompt", "best_of", "echo", "frequency_penalty", "logit_bias", "logprobs",
    "max_tokens", "n", "presence_penalty", "seed", "stop", "stream", "stream_options", "suffix",
    "temperature", "top_p", "user", "return_hidden_states", "top_k", "min_p", "min_tokens",
    "json_schema", "regex", "ebnf", "repetition_penalty", "stop_token_ids", "stop_regex",
    "no_stop_trim", "ignore_eos", "skip_special_tokens", "lora_path", "session_id",
    "session_params", "response_format", "custom_params", "custom_logit_processor", "rid",
    "extra_key", "cache_salt", "priority", "custom_labels",
}
# [oai] ChatCompletionRequest
CHAT_COMPLETION_REQUEST = {
    "messages", "model", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs",
    "max_tokens", "max_completion_tokens", "n", "presence_penalty", "response_format", "seed",
    "stop", "stream", "stream_options", "temperature", "top_p", "user", "tools", "tool_choice",
    "parallel_tool_calls", "return_hidden_states", "reasoning_effort", "top_k", "min_p",
    "min_tokens", "regex", "ebnf", "repetition_penalty", "stop_token_ids", "stop_regex",
    "no_stop_trim", "ignore_eos", "continue_final_message", "skip_special_tokens", "lora_path",
    "session_id", "session_params", "separate_reasoning", "stream_reasoning",
    "chat_template_kwargs", "rid", "extra_key", "cache_salt", "priority",
}
STREAM_OPTIONS = {"include_usage", "continuous_usage_stats"}
RESPONSE_FORMAT = {"type", "json_schema"}
JSON_SCHEMA_FORMAT = {"name", "description", "schema", "strict"}
# [oai] responses (fields popped when None by the model serializers are left out)
USAGE = {"prompt_tokens", "total_tokens", "completion_tokens", "prompt_tokens_details",
         "reasoning_tokens"}
COMPLETION_RESPONSE = {"id", "object", "created", "model", "choices", "usage", "metadata"}
COMPLETION_CHOICE = {"index", "text", "logprobs", "finish_reason", "matched_stop"}
COMPLETION_STREAM_RESPONSE = {"id", "object", "created", "model", "choices", "usage"}
CHAT_RESPONSE = {"id", "object", "created", "model", "choices", "usage", "metadata"}
CHAT_CHOICE = {"index", "message", "logprobs", "finish_reason", "matched_stop"}
CHAT_MESSAGE = {"role", "content", "reasoning_content", "tool_calls"}
CHAT_STREAM_RESPONSE = {"id", "object", "created", "model", "choices", "usage"}
CHAT_STREAM_CHOICE = {"index", "delta", "logprobs", "finish_reason", "matched_stop"}
DELTA_MESSAGE = {"role", "content", "reasoning_content", "tool_calls"}
MODEL_CARD = {"id", "object", "created", "owned_by", "root", "parent", "max_model_len"}
# [base] create_error_response / [oai] ErrorResponse
ERROR_RESPONSE = {"object", "message", "type", "param", "code"}
# [met] metric names (SchedulerMetricsCollector + TokenizerMetricsCollector)
METRIC_NAMES = {
    "sglang:num_running_reqs", "sglang:num_used_tokens", "sglang:token_usage",
    "sglang:gen_throughput", "sglang:num_queue_reqs", "sglang:num_grammar_queue_reqs",
    "sglang:cache_hit_rate", "sglang:spec_accept_length", "sglang:utilization",
    "sglang:max_running_requests_under_SLO", "sglang:prompt_tokens_total",
    "sglang:generation_tokens_total", "sglang:cached_tokens_total", "sglang:num_requests_total",
    "sglang:num_aborted_requests_total", "sglang:time_to_first_token_seconds",
    "sglang:inter_token_latency_seconds", "sglang:e2e_request_latency_seconds",
}


@pytest.fixture
async def sim():
    async with SimServer(SimConfig(latency=LatencyModel(speed=50.0))) as server:
        yield server


async def _post(url: str, body: dict) -> tuple[int, object]:
    async with aiohttp.ClientSession() as s:
        async with s.post(url, data=orjson.dumps(body),
                          headers={"Content-Type": "application/json"}) as r:
            return r.status, orjson.loads(await r.read())


async def _stream(url: str, body: dict) -> list:
    async with aiohttp.ClientSession() as s:
        async with s.post(url, data=orjson.dumps(body),
                          headers={"Content-Type": "application/json"}) as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
            raw = await r.read()
    events = [e[len(b"data: "):] for e in raw.split(b"\n\n") if e]
    assert all(e.startswith(b"data: ") for e in raw.split(b"\n\n") if e)   # SSE framing
    assert events[-1] == b"[DONE]"
    return [orjson.loads(e) for e in events[:-1]]


# -- the simulator's responses ------------------------------------------------------------

async def test_native_generate_shapes(sim):
    status, one = await _post(sim.url + "/generate",
                              {"text": "a b c d", "sampling_params": {"max_new_tokens": 2}})
    assert status == 200 and set(one) == NATIVE_ITEM and set(one["meta_info"]) == META_INFO
    assert one["meta_info"]["finish_reason"] == {"type": "length", "length": 2}      # [sb]
    status, many = await _post(sim.url + "/generate",
                               {"text": "a b STOP c", "sampling_params": {"n": 2, "stop": ["STOP"]}})
    assert isinstance(many, list) and len(many) == 2
    assert many[0]["meta_info"]["finish_reason"] == {"type": "stop", "matched": "STOP"}
    chunks = await _stream(sim.url + "/generate", {"text": "x y z", "stream": True})
    assert all(set(c) == NATIVE_ITEM for c in chunks)
    assert chunks[-1]["text"] == "x y z"                       # cumulative text, SGLang's default
    assert chunks[-1]["meta_info"]["finish_reason"]["type"] == "stop"
    assert all(c["meta_info"]["finish_reason"] is None for c in chunks[:-1])


async def test_openai_shapes(sim):
    status, comp = await _post(sim.url + "/v1/completions", {"prompt": "a b", "n": 2})
    assert status == 200 and set(comp) == COMPLETION_RESPONSE
    assert all(set(c) == COMPLETION_CHOICE for c in comp["choices"]) and set(comp["usage"]) == USAGE
    status, chat = await _post(sim.url + "/v1/chat/completions",
                               {"messages": [{"role": "user", "content": "hi"}]})
    assert set(chat) == CHAT_RESPONSE and set(chat["choices"][0]) == CHAT_CHOICE
    assert set(chat["choices"][0]["message"]) == CHAT_MESSAGE
    chunks = await _stream(sim.url + "/v1/completions",
                           {"prompt": "a b", "stream": True, "stream_options": {"include_usage": True}})
    assert all(set(c) == COMPLETION_STREAM_RESPONSE for c in chunks)
    assert chunks[-1]["choices"] == [] and set(chunks[-1]["usage"]) <= USAGE
    chunks = await _stream(sim.url + "/v1/chat/completions",
                           {"messages": [{"role": "user", "content": "hi you"}], "stream": True})
    for c in chunks:
        assert set(c) == CHAT_STREAM_RESPONSE and c["object"] == "chat.completion.chunk"
        assert set(c["choices"][0]) == CHAT_STREAM_CHOICE and set(c["choices"][0]["delta"]) == DELTA_MESSAGE
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"


async def test_error_shapes(sim):
    status, body = await _post(sim.url + "/v1/completions", {"prompt": ""})
    assert status == 400 and set(body) == ERROR_RESPONSE and body["code"] == 400
    status, body = await _post(sim.url + "/generate", {"sampling_params": {}})
    assert status == 400 and set(body) == {"error"} and set(body["error"]) == {"message"}  # [http]


async def test_info_models_and_metrics_names(sim):
    async with aiohttp.ClientSession() as s:
        async with s.get(sim.url + "/get_model_info") as r:
            assert set(orjson.loads(await r.read())) == MODEL_INFO
        async with s.get(sim.url + "/v1/models") as r:
            models = orjson.loads(await r.read())
            assert set(models) == {"object", "data"} and set(models["data"][0]) == MODEL_CARD
        async with s.get(sim.url + "/get_server_info") as r:
            info = orjson.loads(await r.read())
            assert {"max_running_requests", "internal_states", "version"} <= set(info)
        async with s.get(sim.url + "/metrics") as r:
            text = await r.text()
    names = {line.split("{")[0] for line in text.splitlines() if line and not line.startswith("#")}
    families = {n.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count") for n in names}
    assert families <= METRIC_NAMES, families - METRIC_NAMES


# -- the client's requests ---------------------------------------------------------------

PARAMS = SamplingParams(max_new_tokens=8, stop=("END",), json_schema='{"type":"object"}',
                        seed=3, temperature=0.5)


async def _client_bodies(sim, api: str, stream: bool) -> list[tuple[str, dict]]:
    async with LLMClient(sim.url, api=api) as client:
        await client.generate("hello there", n=2, params=PARAMS, stream=stream)
        await client.chat([{"role": "user", "content": "hello"}], params=PARAMS, stream=stream)
    return list(sim.body_log)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("api", ["sglang", "openai"])
async def test_client_request_fields_are_sglang_fields(sim, api, stream):
    bodies = await _client_bodies(sim, api, stream)
    assert len(bodies) == 2
    for path, body in bodies:
        if path == "/generate":
            assert set(body) <= GENERATE_REQ_INPUT, set(body) - GENERATE_REQ_INPUT
            assert set(body["sampling_params"]) <= SAMPLING_PARAMS
            assert isinstance(body["sampling_params"]["json_schema"], str)
        else:
            allowed = CHAT_COMPLETION_REQUEST if path == "/v1/chat/completions" else COMPLETION_REQUEST
            assert set(body) <= allowed, set(body) - allowed
            if "stream_options" in body:
                assert set(body["stream_options"]) <= STREAM_OPTIONS
            assert set(body["response_format"]) <= RESPONSE_FORMAT
            assert set(body["response_format"]["json_schema"]) <= JSON_SCHEMA_FORMAT


@pytest.mark.skipif(importlib.util.find_spec("sglang") is None, reason="sglang not installed")
@pytest.mark.parametrize("api", ["sglang", "openai"])
async def test_client_bodies_validate_with_sglang_models(sim, api):
    from sglang.srt.entrypoints.openai.protocol import ChatCompletionRequest, CompletionRequest
    from sglang.srt.managers.io_struct import GenerateReqInput

    for path, body in await _client_bodies(sim, api, stream=False):
        if path == "/generate":
            GenerateReqInput(**body)
        elif path == "/v1/chat/completions":
            ChatCompletionRequest.model_validate(body)
        else:
            CompletionRequest.model_validate(body)
