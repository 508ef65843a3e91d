"""Approximate tokenisation for the simulator.

The simulator has no tokenizer, so one "token" is one whitespace-delimited word together
with the whitespace that follows it (a leading run of whitespace is a token of its own).
That keeps `"".join(split_tokens(t)) == t`, so streamed deltas concatenate back to the
exact text, and it is within a small factor of a BPE count for English prose, which is
all the latency model needs.
"""
from __future__ import annotations

import re

_TOKEN = re.compile(r"\s+|\S+\s*")


def split_tokens(text: str) -> list[str]:
    """Split `text` into pieces whose concatenation is `text` (see module docstring)."""
    if not text:
        return []
    pieces = _TOKEN.findall(text)
    if len(pieces) > 1 and pieces[0].isspace():
        # glue leading whitespace to the first word so it is not a token on its own
        pieces[1] = pieces[0] + pieces[1]
        del pieces[0]
    return pieces


def count_tokens(text: str) -> int:
    """Token count under the same rule, without building the pieces."""
    n = len(text.split())
    return n if n else (1 if text else 0)


def messages_text(messages: list[dict]) -> str:
    """The text a chat template would roughly produce, for counting and matching."""
    parts: list[str] = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):  # OpenAI content parts
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        parts.append(f"{m.get('role', 'user')}: {content or ''}")
    return "\n".join(parts)
