"""engine.aio: the event-loop runner every command and benchmark uses."""
import gc

from engine import aio


def test_run_collects_less_often_and_leaves_the_startup_heap_out_of_collections():
    before_threshold = gc.get_threshold()
    try:
        gc.unfreeze()
        gc.set_threshold(700, 10, 10)

        async def inside():
            return gc.get_threshold(), gc.get_freeze_count()

        threshold, frozen = aio.run(inside())
        assert threshold == aio.GC_THRESHOLDS
        assert frozen > 1000      # the imported modules' objects, frozen before the loop started
    finally:
        gc.unfreeze()
        gc.set_threshold(*before_threshold)
