"""The request and answer shapes of each trainer the reward service talks to.

Each dialect turns a JSON body into (label, completion) pairs and the scores back into the
JSON its caller reads; a label is an instruction id, or a list of them for a composed prompt
(its answer then says, per constraint, whether it was met); everything else (limits, the sandbox, the reward rule) is the
scorer's. A malformed body raises RequestError with one line naming the field at fault.

- native `POST /score`: {"items": [{"instruction_id", "completion"}]} (instruction_id: an id or
  a list; "instruction_ids" is read as well)
  -> {"rewards": [...], "results": [{"reward", "pass_rate", "functions": [{"id", "passed", "status"}],
  and for a list "constraints": [{"instruction_id", "passed", "pass_rate"}]}]}
- OpenRLHF `POST /get_reward` (its --reward.remote_url, --remote_rm_url before v0.10.2; the
  request SingleTurnAgentExecutor sends, OpenRLHF/OpenRLHF
  3c3be6234e0cb353e76bb8019947db9dfe99fca7 openrlhf/utils/agent.py: {"query", "prompts",
  "labels"}, where a query is prompt + response decoded from the policy's tokens and a label is
  the dataset's label-key column, an id or a list of ids, or such a list JSON-encoded as a string;
  engine.reward.split finds where the response starts)
  -> {"rewards", "scores", "extra_logs"} (the keys that executor reads)
- NeMo Gym `POST /verify` (a resources server's verify, see NVIDIA-NeMo/Gym
  07d6b0d07b22fcf530b4c211dae2ee23100428e4 resources_servers/instruction_following/app.py: the
  agent posts its dataset row plus the Responses API `response`, whose last output message
  holds the text; responses_api_agents/simple_agent/app.py; instruction_id: an id or a list,
  "instruction_ids" read as well) -> the body plus "reward", "follow_all_instructions" and
  "follow_instruction_list" (one bool per function; per constraint for a list)
"""
from __future__ import annotations

from typing import Any, Sequence

import orjson

from engine.reward.scorer import RequestError, Score
from engine.reward.split import response_of

Items = list[tuple[Any, Any]]

# End-of-turn markers a decoded query may end with (OpenRLHF decodes the sequence with its
# special tokens); a verifier must see the reply as the user would.
EOS_MARKERS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<end_of_turn>", "<eos>", "</s>",
               "<|end|>")


def _field(body: Any, key: str, kind: type, where: str = "body") -> Any:
    if not isinstance(body, dict):
        raise RequestError(400, f"{where} must be a JSON object, got {type(body).__name__}")
    if key not in body:
        raise RequestError(400, f"{where}: missing field {key!r}")
    value = body[key]
    if not isinstance(value, kind):
        raise RequestError(400, f"{where}.{key} must be a {kind.__name__}, got {type(value).__name__}")
    return value


def _label(body: Any, where: str = "body") -> str | list:
    """An instruction id, or a composed prompt's list of them: `instruction_id` (an id or a list),
    else `instruction_ids` (a list). The scorer checks each id."""
    key = "instruction_id" if isinstance(body, dict) and "instruction_id" in body else "instruction_ids"
    value = body.get(key) if isinstance(body, dict) else None
    if isinstance(value, (str, list)):
        return value
    return _field(body, "instruction_id", str, where)      # raises the one-line error


def label_of(label: Any) -> Any:
    """A label as a trainer's dataset carries it: a list JSON-encoded in a string column is a list."""
    if isinstance(label, str) and label.lstrip().startswith("["):
        try:
            decoded = orjson.loads(label)
        except orjson.JSONDecodeError:
            raise RequestError(400, f"label {label[:80]!r} starts like a list of ids but is not JSON") from None
        return decoded
    return label


# -- native ----------------------------------------------------------------------------------

def native_items(body: Any) -> Items:
    rows = _field(body, "items", list)
    items = []
    for i, row in enumerate(rows):
        where = f"items[{i}]"
        items.append((_label(row, where), _field(row, "completion", str, where)))
    return items


def native_answer(scores: Sequence[Score]) -> dict:
    return {"rewards": [s.reward for s in scores], "results": [s.to_dict() for s in scores]}


# -- OpenRLHF --------------------------------------------------------------------------------

def strip_eos(text: str) -> str:
    changed = True
    while changed:
        changed = False
        stripped = text.rstrip()
        for marker in EOS_MARKERS:
            if stripped.endswith(marker):
                text, changed = stripped[: -len(marker)], True
    return text


def openrlhf_items(body: Any) -> Items:
    queries = _field(body, "query", list)
    prompts = _field(body, "prompts", list)
    labels = _field(body, "labels", list)
    if not len(queries) == len(prompts) == len(labels):
        raise RequestError(400, f"query, prompts and labels differ in length "
                                f"({len(queries)}, {len(prompts)}, {len(labels)})")
    items = []
    for i, (q, p, label) in enumerate(zip(queries, prompts, labels)):
        if not isinstance(q, str) or not isinstance(p, str):
            raise RequestError(400, f"query[{i}] and prompts[{i}] must be strings")
        items.append((label_of(label), strip_eos(response_of(q, p, i))))
    return items


def openrlhf_answer(scores: Sequence[Score]) -> dict:
    rewards = [s.reward for s in scores]
    logs = {"function_pass_rate": [s.pass_rate for s in scores]}
    if any(s.constraints for s in scores):
        logs["constraints_met"] = [[c.passed for c in s.constraints] for s in scores]
    return {"rewards": rewards, "scores": rewards, "extra_logs": logs}


# -- NeMo Gym --------------------------------------------------------------------------------

def response_text(response: Any) -> str:
    """The text of the last message in a Responses API `output` (its output_text parts)."""
    output = _field(response, "output", list, "response")
    for item in reversed(output):
        if isinstance(item, dict) and item.get("type", "message") == "message":
            parts = item.get("content")
            if not isinstance(parts, list):
                raise RequestError(400, "response.output message content must be a list")
            return "".join(p["text"] for p in parts
                           if isinstance(p, dict) and isinstance(p.get("text"), str)
                           and p.get("type", "output_text") == "output_text")
    return ""


def nemo_items(body: Any) -> Items:
    return [(_label(body), response_text(_field(body, "response", dict)))]


def nemo_answer(body: dict, scores: Sequence[Score]) -> dict:
    [s] = scores
    follows = [c.passed for c in s.constraints] if s.constraints else [f.passed for f in s.functions]
    out = {**body, "reward": s.reward, "pass_rate": s.pass_rate,
           "follow_all_instructions": bool(follows) and all(follows),
           "follow_instruction_list": follows, "function_ids": [f.id for f in s.functions]}
    if s.constraints:
        out["constraints"] = [c.to_dict() for c in s.constraints]
    return out
