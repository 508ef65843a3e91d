"""Natural-language inference judges for back-translation: premise -> hypothesis label.

LLMJudge asks the pipeline's own LLM (the default). TransformersNLI runs a local sequence
classification model given by path; transformers and torch are imported only when it loads.
"""
from __future__ import annotations

import asyncio
import threading
from typing import Protocol

from engine.parsing import parse_nli_label
from engine.prompting import render
from engine.roles import JUDGE
from engine.stage import Context
from engine.stages.base import Sampling, ask

LABELS = ("entailment", "neutral", "contradiction")


class NLIJudge(Protocol):
    async def classify(self, premise: str, hypothesis: str, ctx: Context) -> str | None:
        """One of LABELS, or None when no verdict could be read."""
        ...


class LLMJudge:
    """The pipeline's LLM as the judge; `sampling`: its request."""

    def __init__(self, sampling: Sampling) -> None:
        self.sampling = sampling

    async def classify(self, premise: str, hypothesis: str, ctx: Context) -> str | None:
        answers = await ask(ctx, render("nli", premise=premise, hypothesis=hypothesis), self.sampling, role=JUDGE)
        return parse_nli_label(answers[0].text) if answers else None


def _label_name(raw: str) -> str | None:
    raw = raw.lower()
    for label in LABELS:
        if raw.startswith(label[:7]):        # "entail", "neutral", "contrad"
            return label
    return None


class TransformersNLI:
    """A local NLI classifier; its config.id2label must name entailment / neutral / contradiction."""

    def __init__(self, path: str, device: str = "cpu") -> None:
        try:
            import torch
            from transformers import AutoModelForSequenceClassification, AutoTokenizer
        except ImportError as exc:
            raise RuntimeError(f"nli_model_path needs transformers and torch installed ({exc})") from None
        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path).to(device).eval()
        self.device = device
        self.labels = {int(i): _label_name(str(name)) for i, name in self.model.config.id2label.items()}
        if set(self.labels.values()) != set(LABELS):
            raise RuntimeError(f"NLI model at {path} has labels {self.model.config.id2label}, "
                               f"expected {', '.join(LABELS)}")
        self._lock = threading.Lock()

    def classify_sync(self, premise: str, hypothesis: str) -> str:
        with self._lock, self._torch.no_grad():
            enc = self.tokenizer(premise, hypothesis, return_tensors="pt", truncation=True)
            logits = self.model(**{k: v.to(self.device) for k, v in enc.items()}).logits
            return self.labels[int(logits[0].argmax())]  # type: ignore[return-value]

    async def classify(self, premise: str, hypothesis: str, ctx: Context) -> str | None:
        return await asyncio.to_thread(self.classify_sync, premise, hypothesis)
