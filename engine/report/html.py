"""`autoif report RUN_DIR`: the charts as PNGs and one self-contained HTML page (images
embedded as data: URIs, no scripts or styles fetched from anywhere), for a person to open.

Reads RUN_DIR/summary.json. When the summary predates the recorded distributions, the
histograms fall back to the responses stored in RUN_DIR/state.sqlite (the kept results only).
"""
from __future__ import annotations

import base64
import html
import time
from pathlib import Path
from typing import Any

import orjson

from engine.config import Config


class ReportError(RuntimeError):
    """One line: why no report could be made."""


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
    from engine.records import QueryResult
    from engine.report.observe import Distributions
    from engine.state import StateStore
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
    facts = [("wall time", f"{wall:.1f} s"), ("stopped", str(summary.get("stopped", "?"))),
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
    ray = summary.get("ray")
    if ray:
        facts += [("Ray shards", f"{ray.get('shards')} (instructions per shard: "
                                 f"{', '.join(map(str, ray.get('instructions_per_shard', [])))})"),
                  ("actor restarts", str(sum((ray.get("restarts") or {}).values())))]
    return facts


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;color:#222;padding:0 1rem}
h1{font-size:1.5rem} h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;font-size:.85rem} td,th{border:1px solid #ddd;padding:.25rem .5rem;text-align:right}
td:first-child,th:first-child,td:last-child,th:last-child{text-align:left} tr.sub td{color:#666}
dl{display:grid;grid-template-columns:max-content auto;gap:.2rem 1rem} dt{font-weight:600}
img{max-width:100%;height:auto;border:1px solid #eee} .pair{display:flex;gap:1rem;flex-wrap:wrap}
.pair img{max-width:49%} footer{margin-top:2rem;color:#888;font-size:.8rem}
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


def render_page(run_dir: Path, summary: dict, pngs: dict[str, Path]) -> str:
    facts = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in _facts(summary))
    exports = summary.get("exports") or {}
    export_list = "".join(f"<li>{html.escape(k)}: <code>{html.escape(str(v))}</code></li>"
                          for k, v in exports.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>autoif report: {html.escape(run_dir.name)}</title><style>{_CSS}</style></head>
<body>
<h1>autoif run report: <code>{html.escape(str(run_dir))}</code></h1>
<dl>{facts}</dl>
<h2>Funnel</h2>
{_img(pngs["funnel"], "funnel: per stage in, kept and dropped by reason")}
{_funnel_table(summary.get("funnel") or {})}
<h2>Throughput over time</h2>
{_img(pngs["throughput"], "generation tokens/s and pool checks/s over time")}
<h2>Queue depths over time</h2>
{_img(pngs["queues"], "queue depths over time")}
<h2>Pass rates and scores</h2>
<div class="pair">{_img(pngs["pass_rate"], "histogram of response pass rates")}
{_img(pngs["scores"], "histogram of judge scores")}</div>
<h2>Exports</h2><ul>{export_list or "<li>none</li>"}</ul>
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
    cfg = {**Config().to_dict(), **(summary.get("config") or {})}
    out = Path(out_dir) if out_dir else run_dir / "report"
    pngs = draw_all(summary, out, pass_threshold=cfg["pass_threshold"], score_min=cfg["score_min"])
    page = out / "report.html"
    tmp = page.with_suffix(".tmp")
    tmp.write_text(render_page(run_dir, summary, pngs), encoding="utf-8")
    tmp.replace(page)
    return {"html": page, "pngs": pngs}
