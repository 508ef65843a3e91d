"""Every bad flag ends in one line, `autoif CMD: --flag VALUE: why`, and exit 2, before any work.

A value that argparse would take (a port past 65535, a negative limit, a host that does not
resolve, a server that is no URL) is refused while the command line is parsed; what stays
to be found at run time (a port in use, a server that does not answer) is one line too.
"""
import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import main
from engine.outcome import EXIT_FAILED, EXIT_USAGE

ROOT = Path(__file__).resolve().parents[3]


def outcome(capsys, argv: list[str]) -> tuple[int, list[str]]:
    """(exit status, the non-blank stderr lines) of `autoif ARGV` run in this process."""
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def refused(capsys, argv: list[str], prefix: str, why: str) -> str:
    code, lines = outcome(capsys, argv)
    assert code == EXIT_USAGE, (code, lines)
    assert len(lines) == 1, lines
    assert lines[0].startswith(prefix) and why in lines[0], lines[0]
    return lines[0]


BAD_FLAGS = [
    # (argv, the line's start, a word of its reason)
    (["run", "--metrics-port", "70000"], "autoif run: --metrics-port 70000: ", "not a port"),
    (["run", "--metrics-port", "-5"], "autoif run: --metrics-port -5: ", "not a port"),
    (["run", "--metrics-port", "0"], "autoif run: --metrics-port 0: ", "not a port"),
    (["run", "--metrics-port", "http"], "autoif run: --metrics-port http: ", "not an integer"),
    (["run", "--metrics-host", "no-such-host.invalid"], "autoif run: --metrics-host no-such-host.invalid: ",
     "does not resolve"),
    (["run", "--metrics-host", "999.9.9.9"], "autoif run: --metrics-host 999.9.9.9: ", "not an IP address"),
    (["run", "--rounds", "0"], "autoif run: --rounds 0: ", "at least 1"),
    (["run", "--shards", "-1"], "autoif run: --shards -1: ", "at least 1"),
    (["run", "--server", "not-a-url"], "autoif run: --server not-a-url: ", "http(s) URL"),
    (["run", "--server", "ftp://h:1"], "autoif run: --server ftp://h:1: ", "http(s) URL"),
    (["run", "--server", "http://"], "autoif run: --server http://: ", "no host"),
    (["run", "--server", "http://h:1,localhost:2"], "autoif run: --server http://h:1,localhost:2: ", "http(s) URL"),
    (["run", "--server", "http://h:99999"], "autoif run: --server http://h:99999: ", "port"),
    (["stage", "verify", "--input", "in.jsonl", "--output", "out.jsonl", "--server", "h:30000"],
     "autoif stage: --server h:30000: ", "http(s) URL"),
    (["serve-reward", "runs/x", "--port", "-1"], "autoif serve-reward: --port -1: ", "not a port"),
    (["serve-reward", "runs/x", "--port", "99999"], "autoif serve-reward: --port 99999: ", "not a port"),
    (["serve-reward", "runs/x", "--host", "999.9.9.9"], "autoif serve-reward: --host 999.9.9.9: ",
     "not an IP address"),
    (["serve-reward", "runs/x", "--host", "no-such-host.invalid"],
     "autoif serve-reward: --host no-such-host.invalid: ", "does not resolve"),
    (["serve-reward", "runs/x", "--max-batch", "0"], "autoif serve-reward: --max-batch 0: ", "at least 1"),
    (["serve-reward", "runs/x", "--pool-timeout", "0"], "autoif serve-reward: --pool-timeout 0: ", "more than 0"),
    (["eval", "--limit", "0"], "autoif eval: --limit 0: ", "at least 1"),
    (["eval", "--limit", "-3"], "autoif eval: --limit -3: ", "at least 1"),
    (["eval", "--limit", "ten"], "autoif eval: --limit ten: ", "not an integer"),
    (["eval", "--concurrency", "0"], "autoif eval: --concurrency 0: ", "at least 1"),
    (["eval", "--request-timeout", "nan"], "autoif eval: --request-timeout nan: ", "finite"),
    (["eval", "--server", "localhost:30000"], "autoif eval: --server localhost:30000: ", "http(s) URL"),
    (["serve", "--port", "65536"], "autoif serve: --port 65536: ", "not a port"),
    (["serve", "--replicas", "0"], "autoif serve: --replicas 0: ", "at least 1"),
    (["sim", "--port", "70000"], "autoif sim: --port 70000: ", "not a port"),
    (["sim", "--host", "999.9.9.9"], "autoif sim: --host 999.9.9.9: ", "not an IP address"),
]


@pytest.mark.parametrize("argv,prefix,why", BAD_FLAGS, ids=[" ".join(c[0]) for c in BAD_FLAGS])
def test_a_bad_flag_is_one_line_and_exit_2(capsys, argv, prefix, why):
    refused(capsys, argv, prefix, why)


def test_any_parse_error_is_one_line_without_the_usage_block(capsys):
    line = refused(capsys, ["run", "--backend", "nope"], "autoif run: --backend ", "invalid choice")
    assert "usage:" not in line
    refused(capsys, ["stage", "verify"], "autoif stage: ", "required")
    refused(capsys, ["run", "--no-such-flag"], "autoif: ", "unrecognized arguments")


def test_ports_past_the_last_one_are_refused_before_any_server_starts(capsys):
    refused(capsys, ["serve", "--backend", "sim", "--port", "65535", "--replicas", "2"],
            "autoif serve: --port 65535: ", "up to 65536")


def test_good_values_still_parse():
    from engine.cli import build_parser
    parser = build_parser()
    args = parser.parse_args(["run", "--metrics-port", "65535", "--metrics-host", "localhost",
                              "--server", "http://127.0.0.1:30000", "--server", "https://a.example:1,http://[::1]:2"])
    assert (args.metrics_port, args.metrics_host) == (65535, "localhost")
    assert args.servers == ["http://127.0.0.1:30000", "https://a.example:1,http://[::1]:2"]
    assert parser.parse_args(["serve-reward", "d", "--port", "0", "--host", "::1"]).port == 0
    assert parser.parse_args(["eval", "--limit", "1"]).limit == 1


def test_a_bad_server_url_creates_nothing(tmp_path):
    """In a fresh process, as a user runs it: no run directory, no state, no traceback."""
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "engine.cli", "run", "--server", "not-a-url",
                           "--output-dir", str(run_dir), "--no-progress"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == EXIT_USAGE, proc.stderr[-2000:]
    assert proc.stderr.splitlines() == ["autoif run: --server not-a-url: not an http(s) URL "
                                        "(expected http://HOST:PORT)"]
    assert not run_dir.exists()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_eval_against_a_dead_server_says_so(capsys, monkeypatch):
    import engine.commands.eval as eval_cmd
    # the prompts and checkers are never reached: the server is asked first
    monkeypatch.setattr(eval_cmd, "Checkers", lambda: None)
    monkeypatch.setattr(eval_cmd, "load_ifbench", lambda limit, keys: ["prompt"] * limit)
    url = f"http://127.0.0.1:{_closed_port()}"
    code, lines = outcome(capsys, ["eval", "--server", url, "--limit", "2"])
    assert code == EXIT_FAILED, lines
    assert len(lines) == 1 and lines[0].startswith("autoif eval: no LLM server answers: " + url), lines


def _run_dir_with_one_instruction(path: Path) -> Path:
    from engine.records import Instruction, VerifiedInstruction, Verifier
    from engine.stages import BackTranslateStage
    from engine.state import StateStore
    code = "def evaluate(response):\n    return ',' not in response\n"
    with StateStore(path) as store:
        store.put_records([VerifiedInstruction(Instruction("Use no commas.", source="input"),
                                               ((Verifier(code=code), 1.0),), ())], BackTranslateStage.name)
    return path


def test_serve_reward_on_a_port_in_use_is_one_line(tmp_path, capsys):
    run_dir = _run_dir_with_one_instruction(tmp_path / "run")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, lines = outcome(capsys, ["serve-reward", str(run_dir), "--port", str(port),
                                       "--pool-workers", "1"])
    assert code == EXIT_USAGE, lines
    errors = [line for line in lines if line.startswith("autoif serve-reward:")]
    assert errors == [f"autoif serve-reward: --host/--port 127.0.0.1:{port}: cannot listen "
                      "(Address already in use)"], lines
    assert not any("Traceback" in line or line.startswith("  File ") for line in lines), lines


def test_run_metrics_port_in_use_is_one_line(tmp_path, capsys):
    from engine.config import Config
    from engine.errors import RefusedError
    from engine.job import run_job
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = Config.from_flat(servers=[f"http://127.0.0.1:{_closed_port()}"], output_dir=str(tmp_path / "run"))
        with pytest.raises(RefusedError) as refusal:
            asyncio.run(run_job(cfg, metrics_port=port, progress=False))
    assert str(refusal.value).startswith(f"--metrics-port {port}: cannot listen on 127.0.0.1:{port}")
    assert refusal.value.exit_code == EXIT_USAGE
