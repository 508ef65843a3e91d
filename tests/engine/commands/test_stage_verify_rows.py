"""`autoif stage verify` writes a verdict row for every response it reads: the ones of
instructions where nothing passed too, with each function's verdict, while the funnel still
counts what was kept and what was dropped."""
from pathlib import Path

import orjson

from engine.cli import main
from tests.conftest import read_jsonl as read

NO_COMMA = "def evaluate(response):\n    return ',' not in response\n"
LOWER = "def evaluate(response):\n    return response == response.lower()\n"
SHORT = "def evaluate(response):\n    return len(response.split()) < 4\n"
CRASH = "def evaluate(response):\n    raise ValueError('no')\n"


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(orjson.dumps(r).decode() + "\n" for r in rows))
    return path


ROWS = [
    # some responses pass
    {"instruction": "Use no commas.", "prompt": "[Query] Describe tea.",
     "eval_func": [[NO_COMMA, 1.0], [SHORT, 0.9]], "gpt-answer": ["tea is warm", "tea, warm", "Tea is warm and green"]},
    # nothing passes: every response fails a function, or a function fails on it
    {"instruction": "Write in lowercase.", "prompt": "[Query] Name a bird.",
     "eval_func": [[LOWER, 1.0], [CRASH, 0.8]], "gpt-answer": ["A Robin", "robin", "ROBIN"]},
    # nothing passes, the DPO-side shape (no instruction: the prompt is the whole user turn)
    {"prompt": "Use no commas. List three fruits.", "eval_func": [[NO_COMMA, 1.0]],
     "gpt-answer": ["apple, pear, fig", "fig, apple"]},
    # no function to check with: the responses are still rows, not passing
    {"instruction": "Be nice.", "prompt": "[Query] Hi.", "eval_func": [], "gpt-answer": ["hello", "hey"]},
]


def test_one_row_per_response_read_passing_or_not(tmp_path, capsys):
    src = write(tmp_path / "in.jsonl", ROWS)
    out = tmp_path / "out.jsonl"
    assert main(["stage", "verify", "--input", str(src), "--output", str(out)]) == 0
    rows = read(out)
    assert [r["response"] for r in rows] == [a for row in ROWS for a in row["gpt-answer"]]
    assert [(r["pass_rate"], r["kept"]) for r in rows] == [
        (1.0, True), (0.5, False), (0.5, False),
        (0.0, False), (0.5, False), (0.0, False),
        (0.0, False), (0.0, False),
        (0.0, False), (0.0, False)]
    yes, no = {"status": "ok", "value": True}, {"status": "ok", "value": False}
    assert [r["verdicts"] for r in rows[:3]] == [[yes, yes], [no, yes], [yes, no]]
    # the raising function's verdict is its sandbox status, never a pass
    assert [r["verdicts"][0] for r in rows[3:6]] == [no, yes, no]
    assert all(v["status"] != "ok" and v["value"] is None for r in rows[3:6] for v in r["verdicts"][1:])
    assert [r["verdicts"] for r in rows[6:8]] == [[no], [no]]
    assert [r["verdicts"] for r in rows[8:]] == [[], []]
    # instruction and query as the reference writes them (the DPO-side rows have no instruction)
    assert [r.get("instruction") for r in rows] == ["Use no commas."] * 3 + ["Write in lowercase."] * 3 \
        + [None] * 2 + ["Be nice."] * 2
    assert [r["query"] for r in rows[6:8]] == ["Use no commas. List three fruits."] * 2
    # the funnel still counts: one task kept, two with no passing response, one with no function
    summary = [line for line in capsys.readouterr().err.splitlines()
               if line.startswith("autoif stage verify:")]
    assert summary == [f"autoif stage verify: 4 lines (0 bad); 1 kept, 3 dropped "
                       f"(no_response_passed=2, no_functions=1); 10 records -> {out}"]


def test_a_file_where_nothing_passes_still_has_every_row(tmp_path):
    src = write(tmp_path / "in.jsonl", ROWS[1:3])
    out = tmp_path / "out.jsonl"
    assert main(["stage", "verify", "--input", str(src), "--output", str(out)]) == 0
    rows = read(out)
    assert len(rows) == 5 and not any(r["kept"] for r in rows)
