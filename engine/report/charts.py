"""The report's charts, drawn with matplotlib (Agg, no display needed), one PNG each.

Input is a run's summary.json (what `autoif run` writes, single-node or Ray):
- funnel: per stage, items in split into kept and dropped by reason;
- throughput: generation tokens/s and pool checks/s on one time axis (their overlap is the
  point of a streaming engine: the pool checks while the server generates);
- queues: items waiting before each stage over time;
- pass_rate / scores: every graded response's pass rate and every judge score.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

KEPT = "#2e8b57"
DROPPED = "#d62728"
MIXED = "#e0a030"
GEN = "#1f77b4"
POOL = "#ff7f0e"
DPI = 110


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#666")
    ax.set_xticks([])
    ax.set_yticks([])


def funnel_chart(funnel: dict, path: Path) -> Path:
    """Horizontal bars, one per funnel row, top to bottom in pipeline order: kept, then one
    segment per drop reason (reasons share colours across rows)."""
    rows = list(funnel.items())
    reasons: list[str] = []
    for _, row in rows:
        for r in row.get("dropped", {}):
            if r not in reasons:
                reasons.append(r)
    cmap = plt.get_cmap("tab20")
    palette = [cmap(i) for i in range(20) if i not in (4, 5)]   # no greens: green means kept
    colours = {r: palette[i % len(palette)] for i, r in enumerate(reasons)}
    fig, ax = plt.subplots(figsize=(11, 0.42 * max(len(rows), 3) + 1.6))
    if not rows:
        _empty(ax, "no funnel recorded")
        return _save(fig, path)
    labels = [name for name, _ in rows]
    y = list(range(len(rows)))[::-1]
    width_max = max(max(r.get("in", 0), r.get("kept", 0) + sum(r.get("dropped", {}).values()))
                    for _, r in rows) or 1
    for yi, (name, row) in zip(y, rows):
        left = 0
        kept = row.get("kept", 0)
        ax.barh(yi, kept, left=left, color=KEPT, edgecolor="white", height=0.7,
                label="kept" if yi == y[0] else None)
        left += kept
        for reason, n in row.get("dropped", {}).items():
            ax.barh(yi, n, left=left, color=colours[reason], edgecolor="white", height=0.7)
            left += n
        ax.text(max(left, row.get("in", 0)) + width_max * 0.01, yi,
                f"in {row.get('in', 0)}  kept {kept}  out {row.get('out', 0)}",
                va="center", fontsize=8)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=9)
    ax.set_xlim(0, width_max * 1.35)
    ax.set_xlabel("items (kept, then dropped by reason)")
    ax.set_title("Funnel: per stage in / kept / dropped by reason")
    handles = [plt.Rectangle((0, 0), 1, 1, color=KEPT)] + \
              [plt.Rectangle((0, 0), 1, 1, color=colours[r]) for r in reasons]
    ax.legend(handles, ["kept"] + reasons, fontsize=7, loc="upper left",
              bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _save(fig, path)


def overlap_share(series: list[dict]) -> float:
    """Share of the samples with any generation in which the pool was checking too."""
    gen = [p for p in series if p.get("tok_s", 0) > 0]
    return sum(1 for p in gen if p.get("chk_s", 0) > 0) / len(gen) if gen else 0.0


def throughput_chart(series: list[dict], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(11, 4))
    if not series:
        _empty(ax, "no time series recorded (the run was shorter than one sample)")
        return _save(fig, path)
    t = [p["t"] for p in series]
    tok = [p.get("tok_s", 0.0) for p in series]
    chk = [p.get("chk_s", 0.0) for p in series]
    ax.fill_between(t, tok, step="mid", alpha=0.25, color=GEN)
    ax.step(t, tok, where="mid", color=GEN, label="generation tokens/s")
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("generation tokens/s", color=GEN)
    ax.set_ylim(bottom=0)
    ax2 = ax.twinx()
    ax2.fill_between(t, chk, step="mid", alpha=0.25, color=POOL)
    ax2.step(t, chk, where="mid", color=POOL, label="pool checks/s")
    ax2.set_ylabel("pool checks/s", color=POOL)
    ax2.set_ylim(bottom=0)
    both = [(a, b) for a, b in zip(t, zip(tok, chk)) if b[0] > 0 and b[1] > 0]
    if both:
        ax.scatter([a for a, _ in both], [0] * len(both), marker="|", s=80, color="#444",
                   label="both at once", zorder=3, clip_on=False)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper center", fontsize=8,
              bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False)
    ax.set_title(f"Throughput: generation and verification on one time axis "
                 f"(checking during {overlap_share(series):.0%} of generating samples)")
    return _save(fig, path)


def queues_chart(series: list[dict], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(11, 3.6))
    names: list[str] = []
    for p in series:
        for k in p:
            if k.startswith("q_") and k not in names:
                names.append(k)
    if not series or not names:
        _empty(ax, "no queue depths recorded")
        return _save(fig, path)
    t = [p["t"] for p in series]
    for k in names:
        ax.step(t, [p.get(k, 0) for p in series], where="mid", label=k[2:])
    ax.step(t, [p.get("in_flight", 0) for p in series], where="mid", color="#444",
            linestyle="--", label="items in stages")
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("items waiting")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.18), frameon=False)
    ax.set_title("Queue depths: items waiting before each stage")
    return _save(fig, path)


def pass_rate_chart(dist: dict, path: Path, threshold: float | None = None) -> Path:
    """Buckets by upper bound (0 exactly, (0, .1], ... (.9, 1]); a response is kept when its
    pass rate is MORE than the threshold, so buckets at or below it are coloured dropped."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    pr = (dist or {}).get("pass_rate") or {}
    counts = pr.get("counts") or []
    if not sum(counts) or "le" not in pr:
        _empty(ax, "no responses graded")
        return _save(fig, path)
    le = pr["le"]
    lows = [le[0] - 0.1] + le[:-1]                   # the bucket "exactly 0" is drawn left of 0
    colours = []
    for lo, hi in zip(lows, le):
        if threshold is None or lo >= threshold:
            colours.append(KEPT)
        elif hi <= threshold:
            colours.append(DROPPED)
        else:
            colours.append(MIXED)                    # the threshold falls inside this bucket
    ax.bar(lows, counts, width=[hi - lo for lo, hi in zip(lows, le)], align="edge",
           color=colours, edgecolor="white")
    handles = [Patch(color=KEPT, label="kept"), Patch(color=DROPPED, label="dropped")]
    if MIXED in colours:
        handles.append(Patch(color=MIXED, label="both"))
    if threshold is not None:
        handles.append(ax.axvline(threshold, color="#c00", linestyle="--",
                                  label=f"kept when > {threshold:g}"))
    ax.legend(handles=handles, fontsize=8, loc="upper center")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(-0.1, 1)
    ax.set_xticks([-0.05] + [round(x / 10, 1) for x in range(1, 11)])
    ax.set_xticklabels(["0"] + [f"{x / 10:g}" for x in range(1, 11)], fontsize=8)
    ax.set_xlabel("pass rate (share of the instruction's functions that accept the response)")
    ax.set_ylabel("responses")
    ax.set_title(f"Pass rates of {sum(counts)} responses")
    return _save(fig, path)


def score_chart(dist: dict, path: Path, score_min: int | None = None) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.6))
    sc = (dist or {}).get("score") or {}
    counts = sc.get("counts") or []
    if not sum(counts):
        _empty(ax, "no responses scored")
        return _save(fig, path)
    values = sc["values"]
    colours = ["#999" if v == 0 else (KEPT if score_min is None or v >= score_min else DROPPED)
               for v in values]
    ax.bar(values, counts, color=colours, edgecolor="white")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xticks(values)
    ax.set_xticklabels(["none" if v == 0 else str(v) for v in values])
    ax.set_xlabel("judge score (none: no readable score)" +
                  (f"; kept at >= {score_min}" if score_min is not None else ""))
    ax.set_ylabel("responses")
    ax.set_title(f"Scores of {sum(counts)} responses")
    return _save(fig, path)


CHARTS = ("funnel", "throughput", "queues", "pass_rate", "scores")


def draw_all(summary: dict, out_dir: Path, *, pass_threshold: float | None = None,
             score_min: int | None = None) -> dict[str, Path]:
    """Every chart of a summary into out_dir; {name: png path}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    series = summary.get("timeseries") or []
    dist = summary.get("distributions") or {}
    return {
        "funnel": funnel_chart(summary.get("funnel") or {}, out_dir / "funnel.png"),
        "throughput": throughput_chart(series, out_dir / "throughput.png"),
        "queues": queues_chart(series, out_dir / "queues.png"),
        "pass_rate": pass_rate_chart(dist, out_dir / "pass_rate.png", pass_threshold),
        "scores": score_chart(dist, out_dir / "scores.png", score_min),
    }
