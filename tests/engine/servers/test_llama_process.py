"""engine.servers.llama_process: llama.cpp's server from the xllamacpp wheel takes the flags the
engine passes to llama-server, and refuses any other in one line (no model is loaded here)."""
import subprocess
import sys

import pytest

from engine.servers.llama_process import parse
from engine.servers.llamacpp import llamacpp_command


def test_the_engines_llama_server_flags_parse():
    cmd = llamacpp_command(8123, "/m.gguf", server=["x"], parallel=4, ctx_per_slot=1024, threads=2,
                           alias="qwen", repack=False)
    args = parse(cmd[1:])
    assert (args.model, args.host, args.port, args.parallel, args.ctx_size, args.threads, args.alias,
            args.no_repack) == ("/m.gguf", "127.0.0.1", 8123, 4, 4096, 2, "qwen", True)


@pytest.mark.parametrize("flags", [["--flash-attn", "on"], ["--port", "not-a-port"]])
def test_a_flag_it_does_not_take_is_one_line_and_exit_2(flags):
    r = subprocess.run([sys.executable, "-m", "engine.servers.llama_process", "-m", "/m.gguf",
                        "--port", "8123", *flags], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "AUTOIF_LLAMA_SERVER" in lines[0], r.stderr
