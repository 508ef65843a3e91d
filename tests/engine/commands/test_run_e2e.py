"""`autoif run` end to end: the SGLang simulator over real HTTP, the real sandbox pool, the state
store and the exports, with the scripted model of tests/fixtures/autoif_e2e.py.

Every expected number below is derived by hand from that fixture (see its docstring); the
comments show the derivation, so a change in any stage's rules shows up as a precise mismatch.
"""
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from engine.job import JobError, run_job
from engine.run import RunStore, export_run
from engine.config import Config
from engine.records import Instruction, Query, Verifier
from engine.sim.config import LatencyModel, SimConfig
from engine.sim.server import SimServer
from tests.conftest import read_jsonl
from tests.fixtures import autoif_e2e as fx

ROOT = Path(__file__).resolve().parents[3]
PWNED = Path("/tmp/autoif_e2e_pwned")      # what the fixture's `import os` verifier would create

# ---------------------------------------------------------------------------------------------
# The funnel, stage by stage (in = items seen, kept = items with >= 1 output, out = outputs).
#
# augment: 1 seed batch -> the 3 seeds pass through + 2 new instructions = 5 out.
#   The one answer lists 5 proposals: banana (YES) kept, "commas!" exact duplicate of S1,
#   kind (NO) not_checkable, pirate ("Hard to say.") unparsable_checkable, exclaim (YES) kept.
# verifiers: 5 instructions x K=4 answers = 20 answers.
#   S1: malformed JSON (no_json); 3 parse.          cases 4 + 1 + 2 = 7, one bad case ("maybe")
#   S2: all 4 parse.                                 cases 3 + 2 + 2 + 1 = 8
#   S3: def check(...) (no_evaluate_function); 3 parse.   cases 3 + 2 + 2 = 7
#   A1: prose (no_json), JSON without func (no_func_field); 2 parse.   cases 2 + 1 = 3
#   A2: 1000 words cut at 120 tokens (truncated), prose (no_json), "func": 42 (func_not_string),
#       cut-off JSON (no_json): nothing parses -> A2 dropped (no_parsable_answer).
#   answers kept 3+4+3+2+0 = 12; no_json 1+1+2 = 4. cases kept 7+8+7+3 = 25, bad 1.
# crossval (a case needs MORE than half of the compiling functions to agree; a function needs
#   accuracy MORE than 0.5 on the kept cases; error/timeout/memory count as wrong answers):
#   S1: NO_COMMA, IMPORT_OS, COUNT_COMMA; IMPORT_OS rejected by the pool (not_compiling).
#       6 distinct cases ("a b" True given twice); "c d" expected False but both say True
#       -> low_agreement; 5 kept. Both functions 5/5 -> kept.
#   S2: LOWER, UPPER, LOWER2, MEMORY_BOMB all compile (4), so a case needs 3 agreeing.
#       "42"/True, "Capital"/False, "Some Caps"/False: LOWER, UPPER, LOWER2 agree -> kept;
#       the other 5 cases get 2 votes -> low_agreement. On the 3 kept cases UPPER is right too
#       (1.0), MEMORY_BOMB 0/3 -> low_accuracy. Kept: LOWER, UPPER, LOWER2.
#   S3: DONE, DONE2, STARTS (3), a case needs 2. "finished and done." has only DONE2 -> dropped;
#       6 kept. STARTS is right on "not yet" only: 1/6 -> low_accuracy.
#   A1: LOOP, SUBPROCESS; SUBPROCESS rejected (not_compiling); LOOP times out on all 3 cases,
#       so no case gets any vote: low_agreement 3, the function no_kept_cases -> A1 dropped.
#   functions in 3+4+3+2 = 12, kept 2+3+2+0 = 7; cases in 6+8+7+3 = 24, kept 5+3+6+0 = 14.
# backtranslate: 7 functions. UPPER's translation ("capital letters") -> NLI contradiction;
#   DONE2's NLI answer names no label -> unparsable_nli; LOWER2 neutral -> kept. 5 kept.
# audit (probes: "", the instruction, "okay" x 50, 10,000 capitalised words, the query; a
#   function is flagged when it accepts any): NO_COMMA and COUNT_COMMA accept all 5; LOWER and
#   LOWER2 accept "" and "okay ..."; DONE accepts none. 4 of 5 flagged (kept: audit_action flag);
#   accepted: empty 4, repeated_word 4, instruction 2, long_text 2, query_echo 2 = 14 of 25.
# queries: 3 instructions x both queries = 6 tasks.
# responses: 6 tasks x K=4 = 24 samples (pass = every kept function says True).
#   S1 tea/rain: 2 pass each, one with commas (low_pass_rate), one empty (empty).
#   S2 tea: 2 pass, 2 have capitals. S2 rain: all 4 have capitals -> no_response_passed.
#   S3 tea: 2 pass, 60 words cut at 40 (truncated), "not ready yet" (low_pass_rate).
#   S3 rain: 2 pass, 2 fail.   kept 10; low_pass_rate 1+1+2+4+1+2 = 11; empty 2; truncated 1.
# grpo (the share of K=4 samples with pass rate > 0.5, the empty replies included: their
#   rate is 1.0): S1 tea 3/4, S1 rain 3/4, S2 tea 2/4, S2 rain 0/4, S3 tea 2/4, S3 rain 2/4
#   -> 6 prompts, 5 mixed, S2 rain below the band.
# scoring (keep >= 8): S1 tea 9|6, S1 rain 9|6, S2 tea 9|8, S3 tea 10|5, S3 rain none|3.
#   responses kept 5, low_score 4, unparsable_score 1; S3 rain keeps nothing -> low_score.
# ---------------------------------------------------------------------------------------------


def row(n_in, kept, out=None, **dropped):
    return {"in": n_in, "kept": kept, "out": kept if out is None else out, "dropped": dropped}


EXPECTED_FUNNEL = {
    "augment": row(1, 1, 5),
    "augment.answer": row(1, 1),
    "augment.candidate": row(5, 2, duplicate=1, not_checkable=1, unparsable_checkable=1),
    "verifiers": row(5, 4, no_parsable_answer=1),
    "verifiers.answer": row(20, 12, no_json=4, no_evaluate_function=1, no_func_field=1,
                            truncated=1, func_not_string=1),
    "verifiers.case": row(26, 25, bad_case=1),
    "crossval": row(4, 3, no_case_agreed=1),
    "crossval.function": row(12, 7, not_compiling=2, low_accuracy=2, no_kept_cases=1),
    "crossval.case": row(24, 14, low_agreement=10),
    "backtranslate": row(3, 3),
    "backtranslate.function": row(7, 5, contradiction=1, unparsable_nli=1),
    "audit": row(3, 3),
    "audit.function": row(5, 1, 5, flagged=4),
    "audit.probe": row(25, 11, accepted_empty=4, accepted_repeated_word=4, accepted_instruction=2,
                       accepted_long_text=2, accepted_query_echo=2),
    "queries": row(3, 3, 6),
    "responses": row(6, 5, no_response_passed=1),
    "responses.sample": row(24, 10, low_pass_rate=11, empty=2, truncated=1),
    "scoring": row(5, 4, low_score=1),
    "scoring.response": row(10, 5, low_score=4, unparsable_score=1),
    "grpo.prompt": row(6, 5, below_band=1),
}
EXPECTED_GRPO = {  # (query, instruction) -> K-sample pass-rate estimate
    (fx.Q_TEA, fx.S1): 0.75, (fx.Q_RAIN, fx.S1): 0.75, (fx.Q_TEA, fx.S2): 0.5,
    (fx.Q_RAIN, fx.S2): 0.0, (fx.Q_TEA, fx.S3): 0.5, (fx.Q_RAIN, fx.S3): 0.5,
}

# LLM requests: augment 1 + checkable 4 (every fresh proposal) + verifiers 5 + back-translations 7
# + NLI 7 (one per non-empty translation) + responses 6 + scores 10 (one per passed response).
EXPECTED_REQUESTS = 1 + 4 + 5 + 7 + 7 + 6 + 10

# Sandbox checks: crossval functions x (distinct cases + the audit's 5 probes, run in the same
# job) (S1 3x11, S2 4x13, S3 3x12, A1 2x8 = 137; the audit then sends nothing), plus responses
# kept functions x 4 samples x 2 queries (S1 2, S2 2, S3 1 functions: 40) = 177.
# rejected: IMPORT_OS on 6+5 + SUBPROCESS on 3+5; timeout: LOOP on 3+5; memory: BOMB on 8+5.
EXPECTED_POOL = {"checks": 177, "rejected": 19, "timeout": 8, "memory": 13, "ok": 177 - 19 - 8 - 13,
                 "error": 0, "crashed": 0, "bad_return": 0}

KEPT_FUNCTIONS = {fx.S1: [fx.NO_COMMA, fx.COUNT_COMMA], fx.S2: [fx.LOWER, fx.LOWER2], fx.S3: [fx.DONE]}


def prompt(query, instruction):
    return f"{query}\n\n{instruction}"          # prompts/response.txt


# SFT: the best usable response (passed, score >= 8; highest score first) per kept result.
EXPECTED_SFT = {  # (prompt, response) -> score
    (prompt(fx.Q_TEA, fx.S1), "tea is a warm drink brewed from dried leaves"): 9,
    (prompt(fx.Q_RAIN, fx.S1), "rain is water that falls from clouds"): 9,
    (prompt(fx.Q_TEA, fx.S2), "tea is lovely in the morning"): 9,      # beats "tea is calm" (8)
    (prompt(fx.Q_TEA, fx.S3), "brew the tea and then you are done"): 10,
}

# DPO, instruction level: kept cases zipped (True input, False input), at most 2 per instruction,
# in the order the answers proposed them.
# S1 kept: a b/T, hello there/T, a, b/F, x, y, z/F, one, two/F -> 2 pairs
# S2 kept: 42/T, Capital/F, Some Caps/F                         -> 1 pair
# S3 kept: all done/T, done already/F, we are done/T, not yet/F, it is done/T, done it is/F -> 2
# DPO, query level: the best usable response vs the first response with pass rate 0 (not blank).
EXPECTED_DPO = {  # (prompt, chosen, rejected) -> level
    (fx.S1, "a b", "a, b"): "instruction",
    (fx.S1, "hello there", "x, y, z"): "instruction",
    (fx.S2, "42", "Capital"): "instruction",
    (fx.S3, "all done", "done already"): "instruction",
    (fx.S3, "we are done", "not yet"): "instruction",
    (prompt(fx.Q_TEA, fx.S1), "tea is a warm drink brewed from dried leaves",
     "Tea, in short, is a drink."): "query",
    (prompt(fx.Q_RAIN, fx.S1), "rain is water that falls from clouds",
     "Rain, simply put, is water."): "query",
    (prompt(fx.Q_TEA, fx.S2), "tea is lovely in the morning", "Tea Is Lovely"): "query",
    # the 60-word reply cut at 40 tokens (the simulator keeps each word's trailing space)
    (prompt(fx.Q_TEA, fx.S3), "brew the tea and then you are done", "tea " * 40): "query",
}

JSONL_STEMS = {"sft_alpaca", "sft_sharegpt", "sft_trl", "dpo_llamafactory", "dpo_trl",
               "dpo_cases_llamafactory", "dpo_cases_trl", "verifiers"}
DPO_FILES = {"dpo_llamafactory": "query", "dpo_trl": "query",          # file -> its one level
             "dpo_cases_llamafactory": "instruction", "dpo_cases_trl": "instruction"}
GRPO_STEMS = {"grpo_prompts", "grpo_prompts_mixed"}


def job_config(tmp_path: Path, **extra) -> Config:
    return Config.from_flat(**fx.JOB, **fx.write_inputs(tmp_path / "inputs"), **extra)


def sft_view(stem: str, rec: dict) -> tuple[str, str]:
    if stem == "sft_alpaca":
        assert rec["input"] == ""
        return rec["instruction"], rec["output"]
    if stem == "sft_sharegpt":
        human, gpt = rec["conversations"]
        assert (human["from"], gpt["from"]) == ("human", "gpt")
        return human["value"], gpt["value"]
    user, assistant = rec["messages"]
    assert (user["role"], assistant["role"]) == ("user", "assistant")
    return user["content"], assistant["content"]


def dpo_view(stem: str, rec: dict) -> tuple[str, str, str]:
    if stem.endswith("llamafactory"):
        [human] = rec["conversations"]
        assert human["from"] == "human" and rec["chosen"]["from"] == rec["rejected"]["from"] == "gpt"
        return human["value"], rec["chosen"]["value"], rec["rejected"]["value"]
    [user], [chosen], [rejected] = rec["prompt"], rec["chosen"], rec["rejected"]
    assert user["role"] == "user" and chosen["role"] == rejected["role"] == "assistant"
    return user["content"], chosen["content"], rejected["content"]


def instruction_of(prompt_text: str) -> str:
    return prompt_text.split("\n\n")[-1]


def check_exports(run_dir: Path, cfg: Config) -> None:
    """Every export file exists and holds exactly the expected records with full provenance."""
    files = {p.name[:-len(".jsonl")] for p in (run_dir / "exports").glob("*.jsonl")}
    assert files == JSONL_STEMS | GRPO_STEMS
    ids = {text: Instruction(text).id for text in fx.SEEDS + [fx.A1, fx.A2]}
    query_ids = {q: Query(q).id for q in fx.QUERIES}
    contradicted = Verifier(fx.UPPER).id
    for stem in ("sft_alpaca", "sft_sharegpt", "sft_trl"):
        rows = read_jsonl(run_dir / "exports" / f"{stem}.jsonl")
        views = [sft_view(stem, r) for r in rows]
        assert len(views) == len(set(views)) == len(EXPECTED_SFT), stem
        assert set(views) == set(EXPECTED_SFT), stem
        for r, (p, response) in zip(rows, views):
            prov = r["provenance"]
            instruction = instruction_of(p)
            assert prov["level"] == "sft"
            assert prov["instruction_id"] == ids[instruction]
            assert prov["query_id"] == query_ids[p.split("\n\n")[0]]
            assert prov["function_ids"] == [Verifier(c).id for c in KEPT_FUNCTIONS[instruction]]
            assert prov["score"] == EXPECTED_SFT[(p, response)] and prov["pass_rate"] == 1.0
            assert prov["model"] and prov["config_hash"] == cfg.config_hash()
            assert isinstance(prov["response_id"], str) and prov["response_id"]
    for stem, level in DPO_FILES.items():
        rows = read_jsonl(run_dir / "exports" / f"{stem}.jsonl")
        views = [dpo_view(stem, r) for r in rows]
        expected = {k for k, v in EXPECTED_DPO.items() if v == level}
        assert len(views) == len(set(views)) == len(expected), stem
        assert set(views) == expected, stem
        assert len({tuple(sorted(r["provenance"])) for r in rows}) == 1, stem   # one schema
        for r, (p, chosen, rejected) in zip(rows, views):
            prov = r["provenance"]
            assert chosen != rejected
            assert prov["level"] == level
            instruction = instruction_of(p)
            assert prov["instruction_id"] == ids[instruction]
            assert prov["function_ids"] == [Verifier(c).id for c in KEPT_FUNCTIONS[instruction]]
            assert contradicted not in prov["function_ids"]
            assert prov["config_hash"] == cfg.config_hash() and prov["model"]
            if prov["level"] == "query":
                assert prov["query_id"] == query_ids[p.split("\n\n")[0]]
                assert prov["pass_rate"] == 1.0 and prov["rejected_pass_rate"] == 0.0
                assert prov["score"] >= 8
            else:
                assert "query_id" not in prov and "pass_rate" not in prov
    verifiers = read_jsonl(run_dir / "exports" / "verifiers.jsonl")
    assert {v["instruction"]: [f["code"] for f in v["functions"]] for v in verifiers} == KEPT_FUNCTIONS
    for v in verifiers:
        assert v["instruction_id"] == ids[v["instruction"]] and v["cases"]
        assert all(0.5 < f["accuracy"] <= 1.0 for f in v["functions"])
        assert all(isinstance(c["input"], str) and isinstance(c["expected"], bool) for c in v["cases"])
    info = orjson.loads((run_dir / "exports" / "dataset_info.json").read_bytes())
    assert {e["file_name"] for e in info.values()} == {
        f"{s}.jsonl" for s in JSONL_STEMS - {"verifiers", "dpo_trl", "dpo_cases_trl"}}
    assert info["autoif_dpo_llamafactory"]["ranking"] is True
    grpo = read_jsonl(run_dir / "exports" / "grpo_prompts.jsonl")
    by_prompt = {tuple(r["prompt"][0]["content"].split("\n\n")): r for r in grpo}
    assert {k: r["pass_rate"] for k, r in by_prompt.items()} == EXPECTED_GRPO
    for (query, instruction), r in by_prompt.items():
        assert r["prompt"] == [{"role": "user", "content": prompt(query, instruction)}] and r["k"] == 4
        assert r["instruction_id"] == ids[instruction] == r["reward_model"]["ground_truth"]
    mixed = read_jsonl(run_dir / "exports" / "grpo_prompts_mixed.jsonl")
    assert mixed == [r for r in grpo if 0 < r["pass_rate"] < 1] and len(mixed) == 5


async def test_run_job_funnel_exports_and_rerun(tmp_path):
    PWNED.unlink(missing_ok=True)
    sim_cfg = SimConfig(responder="tests.fixtures.autoif_e2e:respond",     # loaded as MODULE:FUNC
                        latency=LatencyModel(zero_latency=True))
    async with SimServer(sim_cfg) as sim:
        cfg = job_config(tmp_path, servers=[sim.url], output_dir=str(tmp_path / "run"))
        summary = await run_job(cfg, progress=False)
        run_dir = tmp_path / "run"

        assert summary["stopped"] == "completed"
        assert summary["funnel"] == EXPECTED_FUNNEL
        assert summary["sink_items"] == EXPECTED_FUNNEL["scoring"]["out"]
        on_disk = orjson.loads((run_dir / "summary.json").read_bytes())
        assert on_disk["funnel"] == EXPECTED_FUNNEL
        assert {k: summary["pool"][k] for k in EXPECTED_POOL} == EXPECTED_POOL
        assert not PWNED.exists()                          # the hostile verifier never ran
        # every distinct request went over HTTP once, each answered (no retries, no failures)
        assert sim.counters.received == sim.counters.completed == EXPECTED_REQUESTS
        check_exports(run_dir, cfg)
        exports = {p.name: p.read_bytes() for p in (run_dir / "exports").glob("*.jsonl")}
        # The run exported the results it held in memory; read back from the store they make
        # the same files, row for row and in the same order.
        store = RunStore.open(cfg, run_dir)
        try:
            again_files = export_run(cfg, store, tmp_path / "reexport")
        finally:
            store.close()
        reexported = [p for p in again_files.values() if p.suffix == ".jsonl"]
        assert len(reexported) >= 5
        for p in reexported:
            assert p.read_bytes() == exports[p.name], p.name

        # The same command again over the same run directory: every answer comes from the
        # state store (the simulator receives nothing), the funnel and the exports are the same.
        again = await run_job(cfg, progress=False)
        assert sim.counters.received == EXPECTED_REQUESTS
        assert again["funnel"] == EXPECTED_FUNNEL
        for name, data in exports.items():
            rows = sorted(read_jsonl(run_dir / "exports" / name), key=orjson.dumps)
            assert rows == sorted((orjson.loads(x) for x in data.splitlines()), key=orjson.dumps), name

        # a different data-affecting setting must not reuse this run directory
        with pytest.raises(JobError, match="another configuration"):
            await run_job(cfg.replace_flat(responses_k=5), progress=False)
        assert sim.counters.received == EXPECTED_REQUESTS


def test_cli_backend_sim_demo(tmp_path):
    """`autoif run --backend sim --demo` with no --server: the CLI starts the built-in simulator
    (bundled fixture), runs every stage, prints the funnel and writes non-empty SFT and DPO files."""
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "engine.cli", "run", "--backend", "sim", "--demo",
         "--output-dir", str(out), "--no-progress"],
        cwd=ROOT, capture_output=True, text=True, timeout=90,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "started the SGLang simulator" in proc.stderr
    summary = orjson.loads((out / "summary.json").read_bytes())
    funnel = summary["funnel"]
    assert summary["stopped"] == "completed"
    for stage in ("augment", "verifiers", "crossval", "backtranslate", "queries", "responses", "scoring"):
        assert stage in funnel, stage
    # the printed table is the funnel of summary.json, one line per row
    lines = proc.stderr.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:4] == ["stage", "in", "kept", "out"])
    printed = {line.split()[0]: [int(x) for x in line.split()[1:4]]
               for line in lines[header + 1:] if line.split() and line.split()[0] in funnel}
    assert printed == {s: [r["in"], r["kept"], r["out"]] for s, r in funnel.items()}
    # the bundled fixture walks the whole funnel: every stage keeps something, and the filters
    # bite where AutoIF says they should (hostile and wrong verifiers, a contradicted
    # back-translation, failing responses, scores below 8)
    # (audit.function counts clean functions as kept: each of the fixture's kept functions
    # accepts some degenerate probe, so the default action, flag, marks them all and passes
    # every one on)
    assert all(row["kept"] > 0 for name, row in funnel.items() if name != "audit.function"), funnel
    audit = funnel["audit.function"]
    assert audit["out"] == audit["in"] > 0 and sum(audit["dropped"].values()) == audit["in"] - audit["kept"]
    assert funnel["crossval.function"]["dropped"].get("not_compiling", 0) > 0
    # wrong verifiers: the two-sided-cases rule (on by default) now catches the fixture's before
    # their accuracy is counted; either drop shows the filter biting
    wrong = funnel["crossval.function"]["dropped"]
    assert wrong.get("low_accuracy", 0) + wrong.get("one_sided_cases", 0) > 0
    assert funnel["backtranslate.function"]["dropped"].get("contradiction", 0) > 0
    assert funnel["responses.sample"]["dropped"].get("low_pass_rate", 0) > 0
    # (the bundled fixture, regenerated for the code-completion verifier prompts, has no
    # response that the judge scores below 8 any more: scoring's filter is covered by
    # test_run_job_funnel_exports_and_rerun's hand-computed funnel)
    assert funnel["scoring.response"]["in"] == funnel["responses.sample"]["kept"]
    for stem in JSONL_STEMS:
        rows = read_jsonl(out / "exports" / f"{stem}.jsonl")
        assert rows, stem
        if stem in DPO_FILES:
            assert all(dpo_view(stem, r)[1] != dpo_view(stem, r)[2] for r in rows)
            assert {r["provenance"]["level"] for r in rows} == {DPO_FILES[stem]}
        elif stem == "verifiers":
            assert all(r["functions"] and r["cases"] for r in rows)
        else:
            assert all(sft_view(stem, r)[1] for r in rows)
            assert all(r["provenance"]["score"] >= 8 for r in rows)


def test_unreachable_server_is_one_line_and_writes_nothing(tmp_path):
    """A --server nobody listens on: a one-line error and exit 1, not thousands of retries."""
    import socket

    with socket.socket() as s:                      # a port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "engine.cli", "run", "--server", f"http://127.0.0.1:{port}",
         "--output-dir", str(out), "--no-progress"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("autoif run:")]
    assert len(errors) == 1 and "no LLM server answers" in errors[0] and str(port) in errors[0]
    assert not (out / "exports").exists()
