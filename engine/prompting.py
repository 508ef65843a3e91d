"""Prompt templates: one file per LLM call in the `prompts` package, `$name` substitution.

`$`-substitution (string.Template) rather than str.format because templates contain JSON
braces. Templates are read through importlib.resources so they work from an installed wheel.

The judge templates (score, backtranslate, nli) state their task before the variables: the
server's prefix cache then reuses the shared text across calls, and on a CPU server prompt
evaluation is a large share of a run's time.
"""
from __future__ import annotations

import functools
import importlib.resources
from pathlib import Path
from string import Template

from engine.errors import PromptError

PACKAGE = "prompts"

# the LLM calls of the pipeline; each has prompts/<name>.txt
TEMPLATES = ("augment", "augment_list", "checkable", "verifier", "verifier_code", "verifier_cases", "case_follow",
             "case_plain", "pair_break", "pair_meet", "backtranslate", "nli", "response", "score",
             "family", "conflict")


def packaged_file(name: str) -> Path:
    """Path of a data file shipped in the prompts package (seeds, queries, templates)."""
    return Path(str(importlib.resources.files(PACKAGE).joinpath(name)))


@functools.lru_cache(maxsize=None)
def template(name: str) -> Template:
    path = importlib.resources.files(PACKAGE).joinpath(f"{name}.txt")
    if not path.is_file():
        raise PromptError(f"no prompt template {name!r} in package {PACKAGE!r}")
    return Template(path.read_text(encoding="utf-8"))


def render(name: str, **values: object) -> str:
    """Fill template `name`; a missing value is an error (a silent blank would poison data)."""
    try:
        return template(name).substitute({k: str(v) for k, v in values.items()}).strip()
    except KeyError as exc:
        raise PromptError(f"prompt {name!r} needs a value for ${exc.args[0]}") from None


def user_message(text: str) -> list[dict]:
    """The single-turn chat form every stage sends (instruct models expect their chat template)."""
    return [{"role": "user", "content": text}]
