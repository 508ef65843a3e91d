"""A small parser for the Prometheus text exposition format (what SGLang's /metrics serves)."""
from __future__ import annotations

import math
import re
from typing import Iterator, NamedTuple

_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


class Sample(NamedTuple):
    name: str
    labels: dict[str, str]
    value: float


def iter_samples(text: str) -> Iterator[Sample]:
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        labels: dict[str, str] = {}
        brace = line.find("{")
        if brace >= 0:
            close = line.rfind("}")
            name = line[:brace]
            for m in _LABEL.finditer(line[brace + 1:close]):
                labels[m.group(1)] = m.group(2).replace('\\"', '"').replace("\\\\", "\\")
            rest = line[close + 1:].split()
        else:
            name, *rest = line.split()
        if not rest:
            continue
        try:
            value = float(rest[0])  # handles NaN, +Inf, -Inf
        except ValueError:
            continue
        yield Sample(name, labels, value)


def parse_metrics(text: str) -> dict[str, float]:
    """name -> value, summed over label sets (e.g. several DP ranks).

    Histogram `_bucket` series are left out: summing buckets across `le` means nothing;
    their `_sum` and `_count` remain.
    """
    out: dict[str, float] = {}
    for s in iter_samples(text):
        if s.name.endswith("_bucket") and "le" in s.labels:
            continue
        if math.isnan(s.value):
            continue
        out[s.name] = out.get(s.name, 0.0) + s.value
    return out
