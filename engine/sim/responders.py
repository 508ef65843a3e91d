"""Pluggable answer content for the SGLang protocol simulator.

A responder is any callable `(prompt_or_messages, sampling_params, sample_index) -> str`:
`prompt_or_messages` is the prompt string (native /generate, /v1/completions) or the
message list (/v1/chat/completions); `sampling_params` is the SGLang-style dict
(max_new_tokens, stop, json_schema, ...); `sample_index` is 0..n-1 for the n parallel
samples of one request. The simulator applies stop strings and max_new_tokens to what it
returns, so responders just produce the "natural" full answer.

Built in: `echo`, `random` (seeded), `ScriptedResponder` (regex rules from code or a JSONL
fixture of {"match": regex, "responses": [...]}) so pipeline tests get plausible AutoIF
answers, including malformed and hostile ones.
"""
from __future__ import annotations

import importlib
import random
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, Union

import orjson

from engine.sim.tokens import messages_text

PromptOrMessages = Union[str, list]
AUTOIF_FIXTURE = Path(__file__).with_name("autoif_fixture.jsonl")
Responder = Callable[[PromptOrMessages, dict, int], str]


def prompt_text(prompt: PromptOrMessages) -> str:
    """The text a responder should look at: the prompt, or the rendered messages."""
    if isinstance(prompt, str):
        return prompt
    if prompt and isinstance(prompt[0], int):  # input_ids
        return " ".join(map(str, prompt))
    return messages_text(prompt)


def last_user_text(prompt: PromptOrMessages) -> str:
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], dict):
        for m in reversed(prompt):
            if m.get("role") == "user":
                return prompt_text([m]).split(": ", 1)[-1]
    return prompt_text(prompt)


def echo(prompt: PromptOrMessages, sampling_params: dict, sample_index: int) -> str:
    """Answer with the prompt (for chat: the last user message)."""
    return last_user_text(prompt)


_WORDS = (
    "the of and to in is that for it as with was on be by this are from at or an "
    "which have not they one had all their but were there can more has been will if "
    "each about how up out them then she many some so these would other into time "
    "response answer function input output return value check length word sentence "
    "instruction follow format json list number letter paragraph summary"
).split()


@dataclass
class RandomResponder:
    """Seeded random words; the same (seed, prompt, sample_index) gives the same text."""

    seed: int = 0
    min_words: int = 8
    max_words: int = 64

    def __call__(self, prompt: PromptOrMessages, sampling_params: dict, sample_index: int) -> str:
        key = zlib.crc32(f"{self.seed}\x00{sample_index}\x00{prompt_text(prompt)}".encode())
        rng = random.Random(key)
        n = rng.randint(self.min_words, self.max_words)
        return " ".join(rng.choice(_WORDS) for _ in range(n)) + "."


@dataclass
class Rule:
    pattern: re.Pattern
    responses: list[str]


@dataclass
class ScriptedResponder:
    """First rule whose regex matches the prompt answers; sample i gets responses[i % len].

    Unmatched prompts go to `fallback` (echo by default). Rules can be given in code or
    loaded from a JSONL fixture with `from_jsonl`.
    """

    rules: list[Rule] = field(default_factory=list)
    fallback: Responder = echo

    def add(self, pattern: str, responses: Sequence[str] | str, flags: int = re.S) -> "ScriptedResponder":
        if isinstance(responses, str):
            responses = [responses]
        self.rules.append(Rule(re.compile(pattern, flags), list(responses)))
        return self

    @classmethod
    def from_jsonl(cls, path: str | Path, fallback: Responder = echo) -> "ScriptedResponder":
        out = cls(fallback=fallback)
        for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                row = orjson.loads(line)
                out.add(row["match"], row["responses"])
            except (orjson.JSONDecodeError, KeyError, TypeError, re.error) as exc:
                raise ValueError(f"{path}:{lineno}: bad responder rule ({exc})") from None
        return out

    def __call__(self, prompt: PromptOrMessages, sampling_params: dict, sample_index: int) -> str:
        text = prompt_text(prompt)
        for rule in self.rules:
            if rule.pattern.search(text) and rule.responses:
                return rule.responses[sample_index % len(rule.responses)]
        return self.fallback(prompt, sampling_params, sample_index)


def load_responder(spec: Any) -> Responder:
    """Build a responder from a CLI/config spec.

    `echo` | `random` | `random:SEED` | `autoif` (bundled fixture) | `path/to/rules.jsonl` |
    `package.module:function`
    (the function is the responder itself) | an already-built callable.
    """
    if callable(spec):
        return spec
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"unknown responder {spec!r}")
    if spec == "echo":
        return echo
    if spec == "autoif":  # the bundled AutoIF fixture (engine/sim/autoif_fixture.jsonl)
        return ScriptedResponder.from_jsonl(AUTOIF_FIXTURE)
    if spec == "random" or spec.startswith("random:"):
        seed = int(spec.split(":", 1)[1]) if ":" in spec else 0
        return RandomResponder(seed=seed)
    if spec.endswith(".jsonl") or Path(spec).is_file():
        return ScriptedResponder.from_jsonl(spec)
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        obj = getattr(importlib.import_module(module_name), attr)
        if not callable(obj):
            raise ValueError(f"responder {spec!r} is not callable")
        return obj
    raise ValueError(f"unknown responder {spec!r} (echo, random[:SEED], FILE.jsonl, MODULE:FUNC)")
