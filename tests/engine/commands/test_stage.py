"""`autoif stage NAME`: single stages on the AutoIF reference JSONL formats (real sandbox pool)."""
import asyncio
import contextlib
import subprocess
import sys
from pathlib import Path

import orjson

import engine.commands.stage as stage_cmd
from engine.cli import main
from engine.config import Config
from engine.records import Instruction, Query
from engine.runner import StreamRunner
from engine.stage import Context, Funnel
from engine.stages import default_stages
from tests.conftest import read_jsonl as read
from tests.doubles import ScriptedLLM, real_pool

NO_COMMA = "def evaluate(response):\n    return ',' not in response\n"
LOWER = "def evaluate(response):\n    return response == response.lower()\n"


def answer(code, cases):
    return "```json\n" + orjson.dumps({"func": code, "cases": [{"input": i, "output": o} for i, o in cases]}).decode() + "\n```"


def write(path: Path, *rows) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else orjson.dumps(r).decode() for r in rows) + "\n")
    return path


def test_crossval_reference_format(tmp_path, capsys):
    good = {"instruction": "Do not use any commas.",
            "gpt-answer": [answer(NO_COMMA, [("a b", True), ("a, b", False)]),
                           answer("def evaluate(response):\n    return True\n", [("c d", True), ("x, y", "false")]),
                           "no idea"]}
    hopeless = {"instruction": "Be nice.", "gpt-answer": ["I can't", "Nope"]}
    src = write(tmp_path / "in.jsonl", good, "{not json", {"instruction": "x"}, hopeless)
    out = tmp_path / "out.jsonl"
    # the paper's rules alone (the two-sided rule off): one-sided evidence is enough
    assert main(["stage", "crossval", "--input", str(src), "--output", str(out), "--no-two-sided-cases"]) == 0
    [row] = read(out)
    assert row["instruction"] == "Do not use any commas."
    # cases agreed by more than half of the 2 functions: only the True ones (ALWAYS_TRUE disagrees on False)
    assert row["cases"] == [["a b", True], ["c d", True]]
    assert sorted(code for code, _ in row["eval_func"]) == sorted([NO_COMMA, "def evaluate(response):\n    return True\n"])
    err = capsys.readouterr().err
    assert f"{src}:2: malformed JSON" in err and f"{src}:3: missing field 'gpt-answer'" in err
    summary = [line for line in err.splitlines() if line.startswith("autoif stage crossval:")]
    assert summary == [f"autoif stage crossval: 4 lines (2 bad); 1 kept, 2 dropped "
                       f"(bad_record=1, no_parsable_answer=1); 1 records -> {out}"]
    # by default those True-only cases are no evidence, and `return True` does not get through
    assert main(["stage", "crossval", "--input", str(src), "--output", str(out)]) == 0
    assert read(out) == []
    assert "one_sided=1" in capsys.readouterr().err


def test_verify_reference_format(tmp_path, capsys):
    row = {"instruction": "Use no commas and write in lowercase.",
           "prompt": "Answer the user.\n[Query] Describe tea.",
           "eval_func": [[NO_COMMA, 1.0], [LOWER, 0.9]],
           "gpt-answer": ["tea is warm", "Tea is warm", "Tea, warm"]}
    src = write(tmp_path / "in.jsonl", row, {"instruction": "x", "prompt": "y", "eval_func": "bad", "gpt-answer": []})
    out = tmp_path / "out.jsonl"
    assert main(["stage", "verify", "--input", str(src), "--output", str(out)]) == 0
    rows = read(out)
    assert [(r["query"], r["response"], r["pass_rate"], r["kept"]) for r in rows] == [
        ("Describe tea.", "tea is warm", 1.0, True), ("Describe tea.", "Tea is warm", 0.5, False),
        ("Describe tea.", "Tea, warm", 0.0, False)]
    err = capsys.readouterr().err
    assert f"autoif stage: {src}:2: field 'eval_func' has the wrong type (str)\n" in err
    # the funnel table row: stage, in, kept, out, drop reasons (column widths are layout)
    assert "responses.sample 3 1 1 low_pass_rate=2" in " ".join(err.split())
    # the threshold is a config knob
    assert main(["stage", "verify", "--input", str(src), "--output", str(out), "--pass-threshold", "0.4"]) == 0
    assert [r["kept"] for r in read(out)] == [True, True, False]


def test_bad_invocations_are_one_line(tmp_path, capsys):
    assert main(["stage", "verify", "--input", str(tmp_path / "none.jsonl"), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"autoif stage: {tmp_path / 'none.jsonl'}: no such input file"
    cfg = write(tmp_path / "c.toml", "verifier_k = 'many'")
    src = write(tmp_path / "in.jsonl", {"instruction": "x"})
    assert main(["stage", "crossval", "--input", str(src), "--output", str(tmp_path / "o"), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(cfg) in err and "'verifier_k'" in err


def scripted(monkeypatch, script):
    llm = ScriptedLLM(script)

    @contextlib.asynccontextmanager
    async def fake_open_llm(cfg):
        yield llm

    monkeypatch.setattr(stage_cmd, "open_llm", fake_open_llm)
    return llm


def test_score_then_export(tmp_path, monkeypatch, capsys):
    scores = {"tea is warm": "Score: 9", "tea is hot": "**Score:** 6", "tea is tea": "no idea"}
    llm = scripted(monkeypatch, lambda name, prompt, n: [scores[prompt.split("[Reply]\n")[1].split("\n")[0]]])
    base = {"instruction": "Use no commas.", "query": "Describe tea."}
    src = write(tmp_path / "verified.jsonl",
                {**base, "response": "tea is warm", "pass_rate": 1.0, "kept": True},
                {**base, "response": "tea is hot", "pass_rate": 1.0, "kept": True},
                {**base, "response": "tea is tea", "pass_rate": 1.0, "kept": True},
                {**base, "response": "tea, hot", "pass_rate": 0.0, "kept": False},
                {"instruction": "x"})
    scored = tmp_path / "scored.jsonl"
    assert main(["stage", "score", "--input", str(src), "--output", str(scored)]) == 0
    assert llm.count("score") == 3
    assert [(r["response"], r["score"], r["kept"]) for r in read(scored)] == [
        ("tea is warm", 9, True), ("tea is hot", 6, False)]
    err = capsys.readouterr().err
    assert f"{src}:5: missing field 'query'" in err
    assert "low_score=1" in err and "unparsable_score=1" in err and "not_verified=1" in err

    # export: the scored rows, a zero-pass reject, and a crossval row for instruction-level DPO
    rows = read(scored) + [{**base, "response": "tea, hot", "pass_rate": 0.0, "kept": False},
                           {"instruction": "Use no commas.", "eval_func": [[NO_COMMA, 1.0]],
                            "cases": [["a b", True], ["a, b", False]]}]
    both = write(tmp_path / "both.jsonl", *rows)
    out_dir = tmp_path / "export"
    assert main(["stage", "export", "--input", str(both), "--output", str(out_dir)]) == 0
    sft = read(out_dir / "sft_alpaca.jsonl")
    assert [(r["instruction"], r["output"]) for r in sft] == [("Describe tea.\n\nUse no commas.", "tea is warm")]
    dpo = read(out_dir / "dpo_cases_trl.jsonl") + read(out_dir / "dpo_trl.jsonl")
    assert [(d["provenance"]["level"], d["chosen"][0]["content"], d["rejected"][0]["content"]) for d in dpo] == [
        ("instruction", "a b", "a, b"), ("query", "tea is warm", "tea, hot")]


def test_augment_and_backtranslate(tmp_path, monkeypatch, capsys):
    def script(name, prompt, n):
        return {"augment": ["1. End your reply with the word goodbye.\n2. Use the letter q at least twice."],
                "checkable": ["YES"],
                "backtranslate": ["Your reply must not contain commas." if "','" in prompt else "Be lowercase."],
                "nli": ["entailment" if "not contain commas" in prompt else "contradiction"]}[name] * n

    scripted(monkeypatch, script)
    seeds = write(tmp_path / "seeds.jsonl", {"instruction": "Do not use any commas."},
                  {"instruction": "Write only in lowercase letters."}, {"text": "Answer in under 20 words."},
                  {"seed": "wrong key"})
    out = tmp_path / "aug.jsonl"
    assert main(["stage", "augment", "--input", str(seeds), "--output", str(out), "--augment-batches", "2"]) == 0
    rows = read(out)
    assert sorted((r["source"], r["instruction"]) for r in rows) == [
        ("augment", "End your reply with the word goodbye."), ("augment", "Use the letter q at least twice."),
        ("seed", "Answer in under 20 words."), ("seed", "Do not use any commas."),
        ("seed", "Write only in lowercase letters.")]
    err = capsys.readouterr().err
    assert f"{seeds}:4: missing field 'instruction'" in err
    assert "autoif stage augment: 4 lines (1 bad); 2 kept, 0 dropped (none); 5 records" in err

    src = write(tmp_path / "cv.jsonl", {"instruction": "Do not use any commas.",
                                        "eval_func": [[NO_COMMA, 1.0], [LOWER, 0.75]], "cases": [["a b", True]]})
    out = tmp_path / "bt.jsonl"
    assert main(["stage", "backtranslate", "--input", str(src), "--output", str(out)]) == 0
    [row] = read(out)
    assert row["eval_func"] == [[NO_COMMA, 1.0]] and row["cases"] == [["a b", True]]
    assert [b["label"] for b in row["back_translations"]] == ["entailment", "contradiction"]


def test_real_command_line(tmp_path):
    src = write(tmp_path / "in.jsonl", {"instruction": "Use no commas.", "prompt": "[Query] Hi",
                                        "eval_func": [[NO_COMMA, 1.0]], "gpt-answer": ["hello there", "hi, you"]})
    out = tmp_path / "out.jsonl"
    proc = subprocess.run([sys.executable, "-m", "engine.cli", "stage", "verify", "--input", str(src),
                           "--output", str(out)], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[3])
    assert proc.returncode == 0, proc.stderr
    assert [r["kept"] for r in read(out)] == [True, False]
    assert "autoif stage verify: 1 lines (0 bad); 1 kept, 0 dropped (none)" in proc.stderr


def test_stage_and_run_give_the_same_verdicts(tmp_path):
    """The same answers through `autoif stage crossval` + `verify` and through the stages as
    `autoif run` builds and streams them (scripted LLM, real pool): the same functions, cases,
    accuracies, pass rates and verdicts."""
    instruction, query = "Do not use any commas.", "Describe tea."
    verifier_answers = [answer(NO_COMMA, [("a b", True), ("a, b", False)]),
                        answer(LOWER, [("c d", True), ("x, y", False)]),
                        answer("def evaluate(response):\n    return True\n", [("ok", True)]), "no idea"]
    responses = ["tea is warm", "Tea is warm", "tea, warm", "Tea, Warm"]

    cv = tmp_path / "cv.jsonl"
    assert main(["stage", "crossval", "--input", str(write(tmp_path / "a.jsonl", {
        "instruction": instruction, "gpt-answer": verifier_answers})), "--output", str(cv),
        "--no-two-sided-cases"]) == 0       # the kept cases below are one-sided: the paper's rules
    [cv_row] = read(cv)
    ver = tmp_path / "ver.jsonl"
    assert main(["stage", "verify", "--input", str(write(tmp_path / "r.jsonl", {
        "instruction": instruction, "prompt": f"[Query] {query}", "eval_func": cv_row["eval_func"],
        "gpt-answer": responses})), "--output", str(ver)]) == 0
    stage_verdicts = [(r["response"], r["pass_rate"], r["kept"]) for r in read(ver)]

    def script(name, prompt, n):
        return verifier_answers if name == "verifier" else responses

    async def through_run():
        cfg = Config.from_flat(verifier_k=len(verifier_answers), responses_k=len(responses), queries_per_instruction=1,
                               verifier_style="json", two_sided_cases=False)
        stages = default_stages(cfg, [], [Query(query)], names=("verifiers", "crossval", "queries", "responses"))
        verified, results = [], []

        class Keep:                       # remembers what crossval lets through
            name = "keep"

            async def process(self, item, ctx):
                verified.append(item)
                return [item]

        async with real_pool() as pool:
            ctx = Context(llm=ScriptedLLM(script), executor=pool, funnel=Funnel())
            await StreamRunner(stages[:2] + [Keep()] + stages[2:], ctx, sink=results.append).run(
                [Instruction(instruction)])
        return verified, results

    [v], [result] = asyncio.run(through_run())
    assert [[f.code, acc] for f, acc in v.functions] == cv_row["eval_func"]
    assert [[c.input, c.expected] for c in v.cases] == cv_row["cases"]
    assert [(r.text, r.pass_rate, r.passed) for r in result.responses] == stage_verdicts
    # not a trivial agreement: one function always says True, two cases are dropped, one response fails
    assert len(v.functions) == 3 and len(v.cases) == 3
    assert [kept for _, _, kept in stage_verdicts] == [True, True, True, False]


def test_plain_text_seed_file(tmp_path, monkeypatch, capsys):
    """The reference release's seed_instruction.txt: one instruction a line, no JSON."""
    llm = scripted(monkeypatch, lambda name, prompt, n: {"augment": ["1. Reply in exactly two sentences."],
                                                        "checkable": ["YES"]}[name] * n)
    seeds = tmp_path / "seed_instruction.txt"
    seeds.write_text("Answer with at most 50 words\n\nDo not use any commas\nAnswer with at most 50 words\n")
    out = tmp_path / "aug.jsonl"
    assert main(["stage", "augment", "--input", str(seeds), "--output", str(out), "--augment-batches", "1"]) == 0
    assert sorted((r["source"], r["instruction"]) for r in read(out)) == [
        ("augment", "Reply in exactly two sentences."), ("seed", "Answer with at most 50 words"),
        ("seed", "Do not use any commas")]
    assert llm.count("augment") == 1
    assert "autoif stage augment: 3 lines (0 bad)" in capsys.readouterr().err


def test_dpo_side_reference_files(tmp_path, capsys):
    """dpo_query_w_funcs rows have no instruction (the prompt is the whole user turn): verify
    grades them; its output and the reference's {"query", "response": [[text, pass_rate]]} export."""
    prompt = "Do not use any commas. Describe tea."
    src = write(tmp_path / "dpo_query_w_funcs.jsonl",
                {"prompt": prompt, "eval_func": [[NO_COMMA, 0.9]], "gpt-answer": ["tea is warm", "tea, warm"]})
    out = tmp_path / "ver.jsonl"
    assert main(["stage", "verify", "--input", str(src), "--output", str(out)]) == 0
    assert read(out) == [{"query": prompt, "response": "tea is warm", "pass_rate": 1.0, "kept": True,
                          "verdicts": [{"status": "ok", "value": True}]},
                         {"query": prompt, "response": "tea, warm", "pass_rate": 0.0, "kept": False,
                          "verdicts": [{"status": "ok", "value": False}]}]
    scores = write(tmp_path / "dpo_query_eval_score_results.jsonl",
                   {"query": "Use lowercase. Name a bird.", "response": [["a robin", 1.0], ["A Robin", 0.0]]})
    for src in (out, scores):
        out_dir = tmp_path / f"export-{src.stem}"
        assert main(["stage", "export", "--input", str(src), "--output", str(out_dir)]) == 0
        dpo = read(out_dir / "dpo_trl.jsonl")
        assert len(dpo) == 1 and dpo[0]["provenance"]["level"] == "query"
        assert dpo[0]["prompt"][0]["content"] == (prompt if src == out else "Use lowercase. Name a bird.")
        assert (dpo[0]["chosen"][0]["content"], dpo[0]["rejected"][0]["content"]) == (
            ("tea is warm", "tea, warm") if src == out else ("a robin", "A Robin"))
    # scoring needs the instruction: such rows are refused one line each
    assert main(["stage", "score", "--input", str(out), "--output", str(tmp_path / "s.jsonl")]) == 0
    assert f"{out}:1: missing field 'instruction' (the judge needs it)" in capsys.readouterr().err


def test_score_reuses_scores_in_the_file(tmp_path, monkeypatch, capsys):
    """A numeric "score", or the reference's judge answers in "gen", is used as is: no LLM is asked."""
    llm = scripted(monkeypatch, lambda name, prompt, n: ["Score: 10"])
    base = {"instruction": "Use no commas.", "query": "Describe tea.", "pass_rate": 1.0, "kept": True}
    src = write(tmp_path / "scored.jsonl", {**base, "response": "tea is warm", "score": 9},
                {**base, "response": "tea is hot", "gen": ["Clear and short.\n\nScore: 3"]})
    out = tmp_path / "out.jsonl"
    assert main(["stage", "score", "--input", str(src), "--output", str(out)]) == 0
    assert [(r["response"], r["score"], r["kept"]) for r in read(out)] == [("tea is warm", 9, True),
                                                                         ("tea is hot", 3, False)]
    assert llm.calls == []
    # a row with neither is judged by the LLM, the others still are not
    src = write(tmp_path / "mixed.jsonl", {**base, "response": "tea is warm", "score": 9},
                {**base, "response": "tea is green"})
    assert main(["stage", "score", "--input", str(src), "--output", str(out)]) == 0
    assert [(r["response"], r["score"]) for r in read(out)] == [("tea is warm", 9), ("tea is green", 10)]
    assert llm.count("score") == 1
