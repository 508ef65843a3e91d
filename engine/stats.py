"""Counters of several parts (clients, pools, shards) added up into one."""
from __future__ import annotations


def sum_numbers(parts: list[dict]) -> dict:
    """Numbers added up key by key (nested dicts too); other values from the first part.
    `servers` and `isolation` describe one part's setup, not counts: also from the first."""
    out: dict = {}
    for part in parts:
        for k, v in (part or {}).items():
            if isinstance(v, bool):
                out.setdefault(k, v)
            elif isinstance(v, (int, float)):
                out[k] = out.get(k, 0) + v
            elif isinstance(v, dict) and k not in ("servers", "isolation"):
                out[k] = sum_numbers([out.get(k, {}), v])
            else:
                out.setdefault(k, v)
    return out
