"""Starting worker processes through multiprocess' forkserver, without re-running __main__.

Stock forkserver/spawn children re-import the parent's __main__ module before
running their target. Workers need nothing from it, and importing it would cost
start-up time, pull the caller's globals into every sandbox worker and break
scripts without an `if __name__ == "__main__"` guard. So the launch data is sent
without the main-module keys; everything else is multiprocess' own machinery.
"""

from __future__ import annotations

import io
import os

import multiprocess
from multiprocess import forkserver, popen_forkserver, spawn, util
from multiprocess.context import reduction, set_spawning_popen

_MAIN_KEYS = ("init_main_from_path", "init_main_from_name")


class _Popen(popen_forkserver.Popen):
    def _launch(self, process_obj):  # mirrors popen_forkserver.Popen._launch
        prep_data = spawn.get_preparation_data(process_obj._name)
        for key in _MAIN_KEYS:
            prep_data.pop(key, None)
        buf = io.BytesIO()
        set_spawning_popen(self)
        try:
            reduction.dump(prep_data, buf)
            reduction.dump(process_obj, buf)
        finally:
            set_spawning_popen(None)
        self.sentinel, w = forkserver.connect_to_new_process(self._fds)
        _parent_w = os.dup(w)
        self.finalizer = util.Finalize(self, util.close_fds, (_parent_w, self.sentinel))
        with open(w, "wb", closefd=True) as f:
            f.write(buf.getbuffer())
        self.pid = forkserver.read_signed(self.sentinel)


_ctx = multiprocess.get_context("forkserver")


class WorkerProcess(_ctx.Process):
    @staticmethod
    def _Popen(process_obj):
        return _Popen(process_obj)


def _internals_present() -> bool:
    # _Popen above mirrors multiprocess 0.70's launch code; use it only if its pieces exist.
    return all(hasattr(m, a) for m, a in (
        (forkserver, "connect_to_new_process"), (forkserver, "read_signed"), (util, "Finalize"),
        (util, "close_fds"), (spawn, "get_preparation_data"), (reduction, "dump")))


def context(start_method: str):
    """(context, Process class) for starting workers with `start_method`."""
    if start_method == "forkserver" and _internals_present():
        # The worker re-executes itself at once, so the forkserver only needs the entry point.
        _ctx.set_forkserver_preload(["sandbox_pool.worker.entry"])
        return _ctx, WorkerProcess
    ctx = multiprocess.get_context(start_method)  # stock behaviour: needs the usual __main__ guard
    return ctx, ctx.Process
