"""`autoif report RUN_DIR`: the charts as PNGs and one self-contained HTML page (images
embedded as data: URIs, no scripts or styles fetched from anywhere), for a person to open.

Reads RUN_DIR/summary.json. When the summary predates the recorded distributions, the
histograms fall back to the responses stored in RUN_DIR/state.sqlite (the kept results only).
"""
from __future__ import annotations

import base64
import dataclasses
import html
import time
from pathlib import Path
from typing import Any

import orjson

from engine.config import Config
from engine.errors import ReportError
from engine.export import usable
from engine.outcome import closing_lines
from engine.records import QueryResult, VerifiedInstruction
from engine.observe import Distributions
from engine.stages import BackTranslateStage
from engine.stages.scoring import UNSCORED
from engine.state import StateStore


def load_summary(run_dir: Path) -> dict:
    path = run_dir / "summary.json"
    try:
        return orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise ReportError(f"{path}: no such file (run `autoif run --output-dir {run_dir}` first)") from None
    except orjson.JSONDecodeError as exc:
        raise ReportError(f"{path}: not JSON ({exc})") from None


def stored_distributions(run_dir: Path) -> dict:
    """Pass rates and scores of the stored (kept) results, when the summary has none."""
    dists = Distributions()
    db = run_dir / "state.sqlite"
    if db.exists():
        store = StateStore(db)
        try:
            for result in store.iter_records(QueryResult, "final"):
                for r in result.responses:
                    dists.add_pass_rate(r.pass_rate)
                    if r.score is not None:
                        dists.add_score(r.score)
        finally:
            store.close()
    return dists.to_dict()


def export_rows(run_dir: Path) -> list[tuple[str, int, int]]:
    """(file, rows, bytes) of each JSONL export, counted from the files themselves."""
    out = []
    for path in sorted((run_dir / "exports").glob("*.jsonl")):
        with open(path, "rb") as fh:
            rows = sum(1 for line in fh if line.strip())
        out.append((path.name, rows, path.stat().st_size))
    return out


@dataclasses.dataclass
class Stored:
    """What the run directory's state holds for the report: the verified instructions and the
    final results (every sampled response of each, kept or not)."""

    instructions: list
    results: list


def stored_records(run_dir: Path) -> Stored:
    db = run_dir / "state.sqlite"
    if not db.exists():
        return Stored([], [])
    store = StateStore(db)
    try:
        verified = store.iter_records(VerifiedInstruction, BackTranslateStage.name)
        return Stored(list({v.instruction.id: v for v in verified}.values()),
                      list(store.iter_records(QueryResult, "final")))
    finally:
        store.close()


def yield_rows(stored: Stored, score_min: int) -> list[dict]:
    """Per verified instruction: its functions and cases, the queries whose results were kept,
    the responses sampled for them, how many passed, and how many made an SFT example."""
    by_id: dict[str, dict] = {}
    for v in stored.instructions:
        by_id[v.instruction.id] = {"instruction": v.instruction.text, "functions": len(v.functions),
                                   "cases": len(v.cases), "queries": 0, "sampled": 0, "passed": 0,
                                   "usable": 0}
    for result in stored.results:
        inst = result.task.instruction
        row = by_id.setdefault(inst.instruction.id, {
            "instruction": inst.instruction.text, "functions": len(inst.functions),
            "cases": len(inst.cases), "queries": 0, "sampled": 0, "passed": 0, "usable": 0})
        row["queries"] += 1
        row["sampled"] += len(result.responses)
        row["passed"] += sum(r.passed for r in result.responses)
        row["usable"] += sum(usable(r, score_min) for r in result.responses)
    return sorted(by_id.values(), key=lambda r: (-r["usable"], r["instruction"]))


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _funnel_table(funnel: dict) -> str:
    rows = []
    for stage, row in funnel.items():
        why = ", ".join(f"{html.escape(r)}&nbsp;{n}" for r, n in row.get("dropped", {}).items()) or "&ndash;"
        sub = " class=sub" if "." in stage else ""
        rows.append(f"<tr{sub}><td>{html.escape(stage)}</td><td>{row.get('in', 0)}</td>"
                    f"<td>{row.get('kept', 0)}</td><td>{row.get('out', 0)}</td><td>{why}</td></tr>")
    return ("<table><thead><tr><th>stage</th><th>in</th><th>kept</th><th>out</th>"
            "<th>dropped by reason</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def _facts(summary: dict) -> list[tuple[str, str]]:
    client, pool = summary.get("client") or {}, summary.get("pool") or {}
    wall = summary.get("wall_s") or 0.0
    facts = [("started", str(summary.get("started_at") or "not recorded")),
             ("command", str(summary.get("command") or "not recorded")),
             ("wall time", f"{wall:.1f} s"), ("stopped", str(summary.get("stopped", "?"))),
             ("final records", str(summary.get("sink_items", 0)))]
    if client:
        toks = client.get("completion_tokens", 0)
        facts += [("LLM requests", str(client.get("requests", 0))),
                  ("completion tokens", f"{toks} ({toks / wall:.0f}/s)" if wall else str(toks))]
    if pool:
        facts += [("sandbox checks", str(pool.get("checks", 0))),
                  ("sandbox busy", f"{pool.get('busy_s', 0.0):.1f} worker-s")]
    grpo = summary.get("grpo")
    if grpo:
        facts += [("GRPO prompts with mixed rewards",
                   f"{grpo.get('mixed', 0)} of {grpo.get('prompts', 0)} "
                   f"({100 * grpo.get('mixed_share', 0.0):.1f}%, pass rate strictly inside "
                   f"{tuple(grpo.get('band', (0, 1)))})")]
    compose = summary.get("compose")
    if compose:
        facts += [("verified instructions by family",
                   ", ".join(f"{k} {v}" for k, v in (compose.get("families") or {}).items()) or "none"),
                  ("final results by number of constraints",
                   ", ".join(f"{k}: {v}" for k, v in (compose.get("results_by_constraints") or {}).items()) or "none"),
                  ("conflicting pairs (never composed)", str(compose.get("conflicts", 0)))]
    ray = summary.get("ray")
    if ray:
        facts += [("Ray shards", f"{ray.get('shards')} (instructions per shard: "
                                 f"{', '.join(map(str, ray.get('instructions_per_shard', [])))})"),
                  ("actor restarts", str(sum((ray.get("restarts") or {}).values())))]
    return facts


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _run_section(summary: dict, cfg: dict) -> str:
    lost = closing_lines(summary)
    status = ("<p class=bad>" + "<br>".join(_esc(line) for line in lost) + "</p>") if lost else \
        "<p class=good>every item reached a verdict</p>"
    rows = "".join(f"<tr><td>{_esc(k)}</td><td>{_esc(v)}</td></tr>" for k, v in cfg.items())
    return (f"<dl><dt>model</dt><dd><code>{_esc(summary.get('model') or cfg.get('model', '?'))}</code></dd>"
            f"<dt>config hash</dt><dd><code>{_esc(summary.get('config_hash', '?'))}</code></dd></dl>"
            f"{status}<details><summary>configuration ({len(cfg)} settings)</summary>"
            f"<table class=cfg><tbody>{rows}</tbody></table></details>")


def _exports_section(files: list[tuple[str, int, int]]) -> str:
    if not files:
        return "<p>no export files</p>"
    rows = "".join(f"<tr><td><code>{_esc(name)}</code></td><td>{n}</td><td>{size / 1024:.1f} KiB</td></tr>"
                   for name, n, size in files)
    return f"<table class=exports><thead><tr><th>file</th><th>rows</th><th>size</th></tr></thead><tbody>{rows}</tbody></table>"


def _yield_section(rows: list[dict], limit: int = 50) -> str:
    if not rows:
        return "<p>no verified instructions stored</p>"
    body = []
    for r in rows[:limit]:
        rate = f"{r['usable'] / r['sampled']:.0%}" if r["sampled"] else "&ndash;"
        body.append(f"<tr><td class=text>{_esc(r['instruction'])}</td><td>{r['functions']}</td>"
                    f"<td>{r['cases']}</td><td>{r['queries']}</td><td>{r['sampled']}</td>"
                    f"<td>{r['passed']}</td><td>{r['usable']}</td><td>{rate}</td></tr>")
    more = f"<p>{len(rows) - limit} more not shown</p>" if len(rows) > limit else ""
    return ("<table class=yield><thead><tr><th>instruction</th><th>functions</th><th>cases</th>"
            "<th>queries kept</th><th>responses</th><th>passed</th><th>usable (SFT)</th><th>yield</th>"
            "</tr></thead><tbody>" + "".join(body) + "</tbody></table>" + more)


def _samples_section(stored: Stored, pass_threshold: float, score_min: int, n: int = 3) -> str:
    """A few results: the instruction, its verifier code, and one kept and one dropped response."""
    # one result per instruction, each with a kept and a dropped response to set side by side
    both = [r for r in stored.results if any(usable(x, score_min) for x in r.responses)
            and any(not usable(x, score_min) for x in r.responses)]
    picked = list({r.task.instruction.instruction.id: r for r in reversed(both)}.values())[:n]
    if not picked:
        picked = stored.results[:n]
    if not picked:
        return "<p>no results stored</p>"
    out = []
    for result in picked:
        inst = result.task.instruction
        code = "".join(f"<pre class=code>{_esc(f.code)}</pre><p class=note>accuracy {acc:.2f}</p>"
                       for f, acc in inst.functions)
        responses = []
        for label, cls, keep in (("kept", "good", True), ("dropped", "bad", False)):
            r = next((x for x in result.responses if usable(x, score_min) == keep), None)
            if r is None:
                continue
            score = _score_text(r.score)
            why = "" if keep else (f" (pass rate {r.pass_rate:.2f}, kept when &gt; {pass_threshold:g})"
                                   if not r.passed else f" ({score}, kept at score &ge; {score_min})")
            responses.append(f"<p class={cls}><b>{label}</b>: pass rate {r.pass_rate:.2f}, {score}{why}</p>"
                             f"<pre class=resp>{_esc(r.text[:1200])}</pre>")
        out.append(f"<div class=sample><p><b>instruction</b>: {_esc(inst.instruction.text)}</p>"
                   f"<p><b>query</b>: {_esc(result.task.query[:400])}</p>"
                   f"<details open><summary>verifier code ({len(inst.functions)} function(s))</summary>"
                   f"{code}</details>{''.join(responses)}</div>")
    return "".join(out)


def _score_text(score: int | None) -> str:
    """A stored score of 0 (UNSCORED) means the judge was not asked (score_until had enough, or
    the response failed its checks) or gave no readable score: not a score of 0."""
    return "not judged" if score is None or score == UNSCORED else f"score {score}"


def _table(cls: str, head: tuple[str, ...], rows: list[tuple]) -> str:
    """A plain table; every row carries `cls`, so the funnel's and exports' rows stay apart."""
    th = "".join(f"<th>{_esc(h)}</th>" for h in head)
    body = "".join(f"<tr class={cls}>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table class={cls}><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


POOL_OUTCOMES = ("ok", "timeout", "memory", "error", "crashed", "rejected", "bad_return")


def _sandbox_section(pool: dict) -> str:
    """Check outcomes by kind, worker restarts, and the isolation layers (a missing one in red)."""
    if not pool:
        return "<p>no sandbox counters recorded</p>"
    rows = [(k, pool.get(k, 0)) for k in ("checks", *POOL_OUTCOMES, "restarts")]
    layers = pool.get("isolation") or {}
    # `degraded`: the layers the pool could not provide on this host (also off in `isolation`)
    missing = sorted({k for k, on in layers.items() if not on} | {str(d) for d in pool.get("degraded") or []})
    if missing:
        iso = "<p class=bad>isolation layers missing: " + _esc(", ".join(missing)) + "</p>"
    elif not layers:
        iso = "<p>isolation layers not recorded</p>"
    else:
        iso = f"<p class=good>every isolation layer on ({len(layers)}): {_esc(', '.join(sorted(layers)))}</p>"
    return _table("pool", ("sandbox", "count"), rows) + iso


def _latency_quantile(buckets: dict, q: float) -> str:
    """The upper bound of the latency bucket holding quantile q (the client's buckets count the
    requests in each band, not cumulatively; "+Inf" holds those above the last bound)."""
    total = sum(buckets.values())
    if not total:
        return "-"
    bounds = sorted((float(b), n) for b, n in buckets.items() if b != "+Inf")
    seen = 0
    for bound, n in bounds:
        seen += n
        if seen >= q * total:
            return f"&le; {bound:g} s"
    return f"&gt; {bounds[-1][0]:g} s" if bounds else "-"


def _llm_section(client: dict) -> str:
    """Requests, retries and errors, and latency."""
    if not client:
        return "<p>no LLM counters recorded</p>"
    lat = client.get("latency") or {}
    buckets = {str(k): int(v) for k, v in (lat.get("buckets") or {}).items()}
    done = sum(buckets.values())
    mean = f"{lat.get('sum', 0.0) / done:.2f} s" if done else "-"
    rows = [(k, client.get(k, 0)) for k in ("requests", "succeeded", "failed", "attempts", "retries",
                                            "cancelled")]
    rows += [(f"failed: {k}", n) for k, n in sorted((client.get("failures") or {}).items())]
    rows += [(f"attempt error: {k}", n) for k, n in sorted((client.get("attempt_errors") or {}).items())]
    table = _table("llm", ("LLM", "count"), rows)
    latency = (f"<p>latency: mean {mean}, median {_latency_quantile(buckets, 0.5)}, "
               f"95th percentile {_latency_quantile(buckets, 0.95)} ({done} requests timed)</p>")
    servers = [(url, "healthy" if s.get("healthy") else "out of rotation", s.get("successes", 0),
                s.get("failures", 0), s.get("retries", 0))
               for url, s in sorted((client.get("servers") or {}).items())]
    return table + latency + (_table("servers", ("server", "state", "successes", "failures", "retries"), servers)
                              if servers else "")


def _stage_time_section(stages: dict) -> str:
    """Per stage: items timed, summed busy seconds (items overlap, so it exceeds wall time), mean."""
    if not stages:
        return "<p>no stage timings recorded</p>"
    rows = [(name, s.get("timed", 0), f"{s.get('busy_s', 0.0):.1f}",
             f"{s.get('busy_s', 0.0) / s['timed']:.3f}" if s.get("timed") else "-")
            for name, s in stages.items()]
    return _table("time", ("stage", "items", "busy s (summed)", "s per item"), rows)


def _audit_section(stored: "Stored") -> str:
    """Every function the audit flagged: its instruction, the probes it accepted, its weight."""
    rows = []
    for v in stored.instructions:
        code = {f.id: f.code for f, _ in v.functions}
        for a in v.audits:
            if a.flagged:
                first = next((ln for ln in code.get(a.verifier_id, "").splitlines() if ln.strip()), "")
                rows.append((v.instruction.text, a.verifier_id, first, ", ".join(a.accepted), f"{a.weight:g}"))
    if not rows:
        return "<p class=good>no function flagged</p>"
    return (f"<p>{len(rows)} function(s) flagged</p>"
            + _table("audit", ("instruction", "function", "first line", "accepted probes", "reward weight"),
                     sorted(rows)))


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;color:#222;padding:0 1rem}
h1{font-size:1.5rem} h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;font-size:.85rem} td,th{border:1px solid #ddd;padding:.25rem .5rem;text-align:right}
td:first-child,th:first-child,td:last-child,th:last-child{text-align:left} tr.sub td{color:#666}
dl{display:grid;grid-template-columns:max-content auto;gap:.2rem 1rem} dt{font-weight:600}
img{max-width:100%;height:auto;border:1px solid #eee} .pair{display:flex;gap:1rem;flex-wrap:wrap}
.pair img{max-width:49%} footer{margin-top:2rem;color:#888;font-size:.8rem}
.good{color:#2e7d32} .bad{color:#c62828} td.text{text-align:left;max-width:40rem}
pre{background:#f6f6f6;padding:.5rem;overflow-x:auto;font-size:.8rem;white-space:pre-wrap}
pre.resp{border-left:3px solid #ccc} .sample{border:1px solid #ddd;padding:.2rem .8rem;margin:.8rem 0}
.note{color:#666;font-size:.8rem;margin-top:-.5rem} table.cfg td{text-align:left}
"""

# Marks the body once every image has decoded (data-images-loaded="N of M"), so a headless
# browser check, or a person with devtools, can see at once whether all charts rendered.
_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images-loaded', ok + ' of ' + imgs.length);
});
"""


def render_page(run_dir: Path, summary: dict, pngs: dict[str, Path], cfg: dict | None = None,
                stored: Stored | None = None) -> str:
    cfg = cfg or {**Config().public_dict(), **(summary.get("config") or {})}
    stored = stored or Stored([], [])
    facts = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in _facts(summary))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>autoif report: {html.escape(run_dir.name)}</title><style>{_CSS}</style></head>
<body>
<h1>autoif run report: <code>{html.escape(str(run_dir))}</code></h1>
<dl>{facts}</dl>
<h2>Run</h2>
{_run_section(summary, cfg)}
<h2>Funnel</h2>
{_img(pngs["funnel"], "funnel: per stage in, kept and dropped by reason")}
{_funnel_table(summary.get("funnel") or {})}
<h2>LLM</h2>
{_llm_section(summary.get("client") or {})}
<h2>Time per stage</h2>
{_stage_time_section(summary.get("stages") or {})}
<h2>Sandbox</h2>
{_sandbox_section(summary.get("pool") or {})}
<h2>Audit</h2>
{_audit_section(stored)}
<h2>Throughput over time</h2>
{_img(pngs["throughput"], "generation tokens/s and pool checks/s over time")}
<h2>Queue depths over time</h2>
{_img(pngs["queues"], "queue depths over time")}
<h2>Pass rates and scores</h2>
<div class="pair">{_img(pngs["pass_rate"], "histogram of response pass rates")}
{_img(pngs["scores"], "histogram of judge scores")}</div>
<h2>Yield per instruction</h2>
{_yield_section(yield_rows(stored, cfg["score_min"]))}
<h2>Sample records</h2>
{_samples_section(stored, cfg["pass_threshold"], cfg["score_min"])}
<h2>Exports</h2>
{_exports_section(export_rows(run_dir))}
<footer>made by <code>autoif report</code> on {time.strftime("%Y-%m-%d %H:%M:%S")}</footer>
<script>{_SCRIPT}</script>
</body></html>
"""


def make_report(run_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Write the PNGs and report.html; returns {"html": path, "pngs": {name: path}}."""
    from engine.report.charts import draw_all
    run_dir = Path(run_dir)
    summary = load_summary(run_dir)
    if not summary.get("distributions"):
        summary["distributions"] = stored_distributions(run_dir)
    cfg = {**Config().public_dict(), **(summary.get("config") or {})}
    out = Path(out_dir) if out_dir else run_dir / "report"
    pngs = draw_all(summary, out, pass_threshold=cfg["pass_threshold"], score_min=cfg["score_min"])
    page = out / "report.html"
    tmp = page.with_suffix(".tmp")
    tmp.write_text(render_page(run_dir, summary, pngs, cfg, stored_records(run_dir)), encoding="utf-8")
    tmp.replace(page)
    return {"html": page, "pngs": pngs}
