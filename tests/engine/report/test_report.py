"""`autoif report RUN_DIR` on a real simulator run: the PNGs, the one-file HTML page, and the page as
a person sees it, rendered by headless Chromium (skipped, saying why, only where no Chromium is
installed: `apt-get install -y chromium`)."""
from __future__ import annotations

import base64
import html as htmllib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

pytest.importorskip("matplotlib", reason="matplotlib is not installed (pip install -e '.[report]')")
import matplotlib.image as mpimg  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
CHARTS = ("funnel", "throughput", "queues", "pass_rate", "scores")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
pytestmark = pytest.mark.timeout(180)


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)})


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A simulator run (the CLI, built-in simulator, every stage), then `autoif report` on it."""
    run_dir = tmp_path_factory.mktemp("report") / "run"
    # --stage-concurrency 2 at four times the simulator's pace: the run lasts a few seconds, so
    # the time series has samples; --responses-k 4: queries with more passed samples than the
    # judge is asked about (score_until)
    proc = cli("run", "--backend", "sim", "--sim-speed", "4", "--demo", "--output-dir", str(run_dir),
               "--no-progress", "--stage-concurrency", "2", "--responses-k", "4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    made = cli("report", str(run_dir))
    assert made.returncode == 0, made.stderr[-3000:]
    page = Path(made.stdout.strip())
    summary = orjson.loads((run_dir / "summary.json").read_bytes())
    return {"run_dir": run_dir, "page": page, "summary": summary}


def test_pngs_and_page(report):
    out = report["run_dir"] / "report"
    assert report["page"] == out / "report.html"
    page = report["page"].read_text(encoding="utf-8")
    embedded = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(embedded) == len(CHARTS)
    for name, data in zip(CHARTS, embedded):
        png = out / f"{name}.png"
        raw = png.read_bytes()
        assert raw[:8] == b"\x89PNG\r\n\x1a\n", name
        assert base64.b64decode(data) == raw, name       # the page embeds exactly the PNG files
        img = mpimg.imread(png)
        assert img.shape[0] > 200 and img.shape[1] > 400, (name, img.shape)
        assert img[..., :3].std() > 0.02, f"{name} is blank"
    # the pass-rate buckets at or below the threshold (kept only when MORE) are coloured dropped
    dist = report["summary"]["distributions"]["pass_rate"]
    assert dist["le"][5] == 0.5 and sum(dist["counts"][:6]) > 0
    rgb = mpimg.imread(out / "pass_rate.png")[..., :3]
    assert ((rgb[..., 0] > 0.75) & (rgb[..., 1] < 0.25) & (rgb[..., 2] < 0.25)).mean() > 0.001
    # one self-contained file: nothing is fetched from anywhere
    assert not re.search(r'(src|href)="(https?:)?//', page)


def test_page_shows_the_run(report):
    summary, page = report["summary"], report["page"].read_text(encoding="utf-8")
    funnel = summary["funnel"]
    rows = re.findall(r"<tr(?: class=sub)?><td>([^<]+)</td><td>(\d+)</td><td>(\d+)</td><td>(\d+)</td>", page)
    assert [(htmllib.unescape(s), int(a), int(b), int(c)) for s, a, b, c in rows] == \
        [(s, r["in"], r["kept"], r["out"]) for s, r in funnel.items()]
    for row in funnel.values():
        for reason, n in row["dropped"].items():
            assert f"{htmllib.escape(reason)}&nbsp;{n}" in page
    # what the histograms count: every graded response, every judge score (kept or not)
    dist = summary["distributions"]
    assert sum(dist["pass_rate"]["counts"]) == funnel["responses.sample"]["in"]
    judged = funnel.get("scoring.response", {"in": 0, "dropped": {}})
    assert sum(dist["score"]["counts"]) == judged["in"] - judged["dropped"].get("not_needed", 0)
    # the engine sampled its time series at fixed intervals while it ran (not only with a TTY)
    series = summary["timeseries"]
    assert series, "no time series recorded"
    assert all(b["t"] > a["t"] for a, b in zip(series, series[1:]))
    assert {"tok_s", "chk_s", "pool_busy"} <= set(series[-1]) and any(k.startswith("q_") for k in series[-1])


def test_page_has_the_run_exports_yield_and_samples(report):
    """The run's model, config and hash; export row counts per file (counted from the files);
    a per-instruction yield table; sample records with their verifier code, kept and dropped."""
    summary, page = report["summary"], report["page"].read_text(encoding="utf-8")
    assert summary["model"] and f"<code>{htmllib.escape(summary['model'])}</code>" in page
    assert f"<code>{summary['config_hash']}</code>" in page
    assert "every item reached a verdict" in page and "<summary>configuration" in page
    exports = report["run_dir"] / "exports"
    shown = {name: int(n) for name, n in re.findall(r"<tr><td><code>([\w.]+)</code></td><td>(\d+)</td>", page)}
    assert shown == {p.name: len(p.read_bytes().splitlines()) for p in exports.glob("*.jsonl")}
    assert shown["sft_alpaca.jsonl"] > 0 and shown["verifiers.jsonl"] > 0
    verifiers = [orjson.loads(line) for line in (exports / "verifiers.jsonl").read_bytes().splitlines()]
    yield_table = page.split("<h2>Yield per instruction</h2>")[1].split("<h2>")[0]
    assert all(htmllib.escape(v["instruction"]) in yield_table for v in verifiers)
    samples = page.split("<h2>Sample records</h2>")[1].split("<h2>")[0]
    assert samples.count("class=sample") >= 1 and "<pre class=code>def evaluate(response" in samples
    assert "<b>kept</b>" in samples and "<b>dropped</b>" in samples


def test_report_of_a_missing_run_says_why(tmp_path):
    proc = cli("report", str(tmp_path / "nothing"))
    assert proc.returncode == 1
    assert "summary.json: no such file" in proc.stderr


@pytest.mark.skipif(chromium() is None, reason="no Chromium here: apt-get install -y chromium")
def test_page_renders_in_headless_chromium(report, tmp_path):
    url = report["page"].as_uri()
    dom = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile-dom'}",
                          "--virtual-time-budget=5000", "--dump-dom", url],
                         capture_output=True, text=True, timeout=90)
    assert dom.returncode == 0, dom.stderr[-2000:]
    # the page's own load check: every <img> decoded, with a real size
    assert f'data-images-loaded="{len(CHARTS)} of {len(CHARTS)}"' in dom.stdout, dom.stdout[:500]
    assert "autoif run report" in dom.stdout

    shot = Path(os.environ.get("AUTOIF_REPORT_SHOT", tmp_path / "page.png"))   # keep it to look at
    proc = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile-shot'}",
                           "--window-size=1280,2000", "--hide-scrollbars", f"--screenshot={shot}", url],
                          capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    img = mpimg.imread(shot)
    assert img.shape[:2] == (2000, 1280)
    # charts drawn: far from a blank page, with the chart colours present (kept bars are green)
    rgb = img[..., :3]
    assert rgb.std() > 0.05
    green = ((rgb[..., 1] > 0.45) & (rgb[..., 0] < 0.3) & (rgb[..., 2] < 0.45)).mean()
    assert green > 0.002, green


def _section(page: str, title: str) -> str:
    return page.split(f"<h2>{title}</h2>")[1].split("<h2>")[0]


def test_page_has_the_run_start_llm_stage_times_sandbox_and_audit(report):
    """When and how the run was started; LLM counts and latency; time per stage; sandbox outcome
    counts and isolation layers; the functions the audit flagged."""
    summary, page = report["summary"], report["page"].read_text(encoding="utf-8")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", summary["started_at"])
    assert summary["command"].startswith("autoif run ") and "--demo" in summary["command"]
    assert f"<dt>started</dt><dd>{summary['started_at']}</dd>" in page
    assert f"<dt>command</dt><dd>{htmllib.escape(summary['command'])}</dd>" in page

    llm = _section(page, "LLM")
    client = summary["client"]
    for key in ("requests", "retries", "failed"):
        assert f"<tr class=llm><td>{key}</td><td>{client[key]}</td></tr>" in llm
    assert client["requests"] > 0 and re.search(r"latency: mean \d+\.\d\d s, median &le; [\d.]+ s", llm)

    times = _section(page, "Time per stage")
    for name, st in summary["stages"].items():
        assert f"<tr class=time><td>{name}</td><td>{st['timed']}</td><td>{st['busy_s']:.1f}</td>" in times

    sandbox = _section(page, "Sandbox")
    pool = summary["pool"]
    for key in ("checks", "timeout", "memory", "rejected"):
        assert f"<tr class=pool><td>{key}</td><td>{pool[key]}</td></tr>" in sandbox
    assert pool["timeout"] and pool["memory"] and pool["rejected"]   # the demo's checks hit each
    missing = sorted(k for k, on in pool["isolation"].items() if not on)
    assert ("isolation layers missing: " + ", ".join(missing)) in sandbox if missing else \
        "every isolation layer on" in sandbox

    audit = _section(page, "Audit")
    flagged = summary["funnel"]["audit.function"]["dropped"]["flagged"]
    assert flagged and f"<p>{flagged} function(s) flagged</p>" in audit
    assert audit.count("<tr class=audit>") == flagged


def test_page_says_not_judged_for_responses_the_judge_never_scored(report):
    from engine.report.html import Stored, _samples_section, stored_records
    from engine.stages.scoring import UNSCORED
    results = stored_records(report["run_dir"]).results
    # with score_until the judge stops once enough passed responses are kept: the rest are stored
    # unscored, and as dropped samples they must not read as if the judge had said 0
    unjudged = [r for r in results if any(x.passed and x.score == UNSCORED for x in r.responses)]
    assert unjudged
    page = _samples_section(Stored([], unjudged), pass_threshold=0.5, score_min=1)
    assert "not judged" in page and "score 0" not in page


def test_sandbox_section_names_a_missing_isolation_layer():
    from engine.report.html import _sandbox_section
    layers = {"pid_namespace": True, "net_namespace": True, "landlock_fs": False}
    page = _sandbox_section({"checks": 9, "ok": 6, "timeout": 1, "memory": 1, "rejected": 1,
                             "isolation": layers, "degraded": ["landlock_fs"]})
    assert "<p class=bad>isolation layers missing: landlock_fs</p>" in page
    assert "<tr class=pool><td>timeout</td><td>1</td></tr>" in page
    whole = _sandbox_section({"checks": 1, "ok": 1, "isolation": {k: True for k in layers}, "degraded": []})
    assert "class=bad" not in whole and "every isolation layer on (3)" in whole


def test_llm_section_shows_errors_retries_and_latency_quantiles():
    from engine.report.html import _llm_section
    client = {"requests": 132, "succeeded": 130, "failed": 2, "attempts": 140, "retries": 8,
              "failures": {"http_5xx": 2}, "attempt_errors": {"http_5xx": 7, "connect": 1},
              "latency": {"buckets": {"0.25": 51, "0.5": 48, "1": 18, "2.5": 15, "5": 0, "+Inf": 0},
                          "sum": 66.0},
              "servers": {"http://a": {"healthy": False, "successes": 130, "failures": 10, "retries": 8}}}
    page = _llm_section(client)
    for row in (("retries", 8), ("failed", 2), ("failed: http_5xx", 2), ("attempt error: connect", 1)):
        assert "<tr class=llm><td>%s</td><td>%d</td></tr>" % row in page
    # per-band counts: the 66th of 132 is in (0.25, 0.5], the 126th in (1, 2.5]
    assert "latency: mean 0.50 s, median &le; 0.5 s, 95th percentile &le; 2.5 s (132 requests timed)" in page
    assert "<td>http://a</td><td>out of rotation</td>" in page
