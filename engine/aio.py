"""Event-loop helpers: uvloop when it is installed, asyncio otherwise (the caller's choice)."""
from __future__ import annotations

import asyncio
import gc
from typing import Any, Coroutine, TypeVar

T = TypeVar("T")


def install_uvloop() -> bool:
    """Make new event loops uvloop loops; returns False when uvloop is not installed."""
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


# A run allocates mostly acyclic records, which refcounting frees. At CPython's default
# threshold (a collection every 700 net allocations) the collector runs constantly for little
# to free, and every pass stalls the event loop that feeds the server; at 50,000 it runs
# rarely, and cycles (tasks, exceptions) are still collected.
GC_THRESHOLDS = (50_000, 20, 10)


def tune_gc() -> None:
    """Collect less often, and never walk the objects imported so far (they live for good)."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run(main: Coroutine[Any, Any, T], *, use_uvloop: bool = True) -> T:
    """`asyncio.run`, on uvloop when available and wanted, with the collector tuned (tune_gc)."""
    tune_gc()
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(main)
    return asyncio.run(main)
