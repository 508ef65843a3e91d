"""Wire shapes the simulator produces, each taken from SGLang's own source.

Sources (sgl-project/sglang, file @ commit read):
- python/sglang/srt/entrypoints/http_server.py @ 0025436eab0556737d615b36a4dd3e1e26e82f3d
  routes, /generate SSE framing ("data: {json}\\n\\n" ... "data: [DONE]\\n\\n"), native error
  body `_create_error_response`: {"error": {"message": str(e)}} with 400, in-stream native
  error {"error": {"message": ...}}, /get_model_info keys, /get_server_info layout
  (server_args + scheduler_info + internal_states + version), /flush_cache text body.
- python/sglang/srt/entrypoints/openai/protocol.py @ 004c82e07d876f6e4a0ad6e15325706b0f478f1a
  ErrorResponse, UsageInfo, CompletionResponse(+Choice), CompletionStreamResponse,
  ChatCompletionResponse(+Choice), ChatMessage, DeltaMessage, ChatCompletionStreamResponse,
  ModelCard/ModelList.
- python/sglang/srt/entrypoints/openai/serving_base.py @ c5695a4be1c4f84791eeaceeb6e4a775f8e7d0cc
  create_error_response (ErrorResponse dump, HTTP status = code) and
  create_streaming_error_response (json {"error": ErrorResponse dump}).
- python/sglang/srt/entrypoints/openai/serving_completions.py @ 004c82e0...: stream chunks,
  final usage chunk (choices=[], exclude_none), `metadata={"weight_version": ...}`.
- python/sglang/srt/managers/tokenizer_manager.py @ 001067fffe33427bee0ed2f007fb7551a1d76b44
  meta_info keys: id, finish_reason, prompt_tokens, weight_version, num_retractions,
  reasoning_tokens, completion_tokens, cached_tokens, e2e_latency (when finished);
  non-incremental streaming (the default) sends the cumulative text in every chunk.
- schedule_batch.py FINISH_* .to_json(): {"type":"stop","matched":str|int},
  {"type":"length","length":N}, {"type":"abort","message":...,"status_code":...,"err_type":...}.
- python/sglang/srt/metrics/collector.py @ 93d04878cfb9b08645fae7b11bd340ee33b34acf
  Prometheus names (sglang:num_running_reqs, sglang:num_queue_reqs, sglang:gen_throughput,
  sglang:token_usage, sglang:cache_hit_rate, sglang:prompt_tokens_total, ...), labels
  model_name/engine_type.
"""
from __future__ import annotations

import time
from http import HTTPStatus
from typing import Any, Iterable

import orjson


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)


def sse(obj: Any) -> bytes:
    return b"data: " + dumps(obj) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


# -- errors ------------------------------------------------------------------------------
def native_error(message: str) -> dict:
    """http_server._create_error_response body (sent with status 400)."""
    return {"error": {"message": message}}


def openai_error(message: str, err_type: str = "BadRequestError", code: int = 400) -> dict:
    """serving_base.create_error_response: an ErrorResponse dump; HTTP status = code."""
    return {"object": "error", "message": message, "type": err_type, "param": None, "code": code}


def openai_stream_error(message: str, err_type: str = "BadRequestError", code: int = 400) -> dict:
    """serving_base.create_streaming_error_response."""
    return {"error": openai_error(message, err_type, code)}


def status_phrase(code: int) -> str:
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return str(code)


# -- OpenAI-compatible bodies ---------------------------------------------------------------
def openai_finish(finish_reason: dict | None) -> tuple[str | None, Any]:
    """(finish_reason type, matched_stop) as serving_completions derives them."""
    if not finish_reason:
        return None, None
    return finish_reason["type"], finish_reason.get("matched")


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int | None = None) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": ({"cached_tokens": cached_tokens} if cached_tokens else None),
        "reasoning_tokens": 0,
    }


def completion_response(rid: str, model: str, choices: list[dict], use: dict) -> dict:
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": choices, "usage": use, "metadata": {"weight_version": "default"}}


def completion_choice(index: int, text: str, finish_reason: dict | None) -> dict:
    kind, matched = openai_finish(finish_reason)
    return {"index": index, "text": text, "logprobs": None, "finish_reason": kind,
            "matched_stop": matched}


def completion_chunk(rid: str, model: str, created: int, index: int, text: str,
                     finish_reason: dict | None) -> dict:
    # model_dump_json() without exclude_none: "usage": null is on every chunk
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": [completion_choice(index, text, finish_reason)], "usage": None}


def chat_response(rid: str, model: str, choices: list[dict], use: dict) -> dict:
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": choices, "usage": use, "metadata": {"weight_version": "default"}}


def chat_choice(index: int, text: str, finish_reason: dict | None) -> dict:
    kind, matched = openai_finish(finish_reason)
    return {"index": index,
            "message": {"role": "assistant", "content": text, "reasoning_content": None,
                        "tool_calls": None},
            "logprobs": None, "finish_reason": kind, "matched_stop": matched}


def delta_message(content: str | None, role: str | None = None) -> dict:
    """DeltaMessage dump (hidden_states is dropped when None)."""
    return {"role": role, "content": content, "reasoning_content": None, "tool_calls": None}


def chat_chunk(rid: str, model: str, created: int, index: int, delta: dict,
               finish_reason: dict | None) -> dict:
    kind, matched = openai_finish(finish_reason)
    return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": index, "delta": delta, "logprobs": None,
                         "finish_reason": kind, "matched_stop": matched}], "usage": None}


def usage_chunk(rid: str, model: str, created: int, obj: str, use: dict) -> dict:
    # model_dump_json(exclude_none=True) in SGLang: None fields are left out
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [],
            "usage": {k: v for k, v in use.items() if v is not None}}


def model_list(model: str, context_len: int) -> dict:
    return {"object": "list", "data": [
        {"id": model, "object": "model", "created": int(time.time()), "owned_by": "sglang",
         "root": model, "parent": None, "max_model_len": context_len}]}


# -- Prometheus text -----------------------------------------------------------------------
def prometheus_text(samples: Iterable[tuple[str, str, str, dict, float]]) -> str:
    """(name, type, help, labels, value) -> exposition text, one HELP/TYPE per family."""
    out: list[str] = []
    seen: set[str] = set()
    for name, kind, doc, labels, value in samples:
        family = name
        if kind == "histogram":
            for suffix in ("_bucket", "_sum", "_count"):
                if name.endswith(suffix):
                    family = name[: -len(suffix)]
        elif kind == "counter" and name.endswith("_total"):
            family = name[: -len("_total")]
        if family not in seen:
            seen.add(family)
            out.append(f"# HELP {family} {doc}")
            out.append(f"# TYPE {family} {kind}")
        label_text = ",".join(f'{k}="{v}"' for k, v in labels.items())
        out.append(f"{name}{{{label_text}}} {float(value)!r}")
    return "\n".join(out) + "\n"
