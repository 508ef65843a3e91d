"""What a running shard tells whoever drives it: typed events, batched on their way out.

A Ray shard streams these to the driver as they happen; a single-node run has no listener.
Records travel as dicts of plain JSON types (the driver rebuilds them against its own verified
instructions), so every event crosses a process boundary as it is.
"""
from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import AsyncIterator, Union


@dataclass
class Tick:
    """About once a second: the live funnel and the newest time-series point."""
    funnel: dict
    point: dict


@dataclass
class Verified:
    """Verified instructions, as the audit leaves them (instruction-level DPO needs them)."""
    records: list[dict]


@dataclass
class Results:
    """Final records, streamed as each is scored."""
    records: list[dict]


@dataclass
class Sampled:
    """Every graded prompt's K pass rates (the GRPO prompt set), once the shard ends."""
    records: list[dict]


@dataclass
class Done:
    """The phase finished: its summary (funnel, stats, time series)."""
    summary: dict = field(default_factory=dict)


ShardEvent = Union[Tick, Verified, Results, Sampled, Done]
_RECORDS = (Verified, Results, Sampled)


class EventQueue:
    """What a phase emits, batched for the consumer: consecutive record events of one kind
    become one, and only the newest of consecutive ticks is kept."""

    def __init__(self) -> None:
        self.q: asyncio.Queue[ShardEvent] = asyncio.Queue()

    def put(self, event: ShardEvent) -> None:
        self.q.put_nowait(event)

    async def drain(self, task: asyncio.Task) -> AsyncIterator[ShardEvent]:
        """Yield events until `task` ends. When the consumer goes away early (the driver
        died), the phase is cancelled."""
        try:
            while True:
                getter = asyncio.ensure_future(self.q.get())
                done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await getter
                    break
                for ev in self._batch(getter.result()):
                    yield ev
            while not self.q.empty():
                for ev in self._batch(self.q.get_nowait()):
                    yield ev
            task.result()                   # re-raise what the phase raised
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    def _batch(self, first: ShardEvent) -> list[ShardEvent]:
        out = [first]
        while not self.q.empty():
            ev = self.q.get_nowait()
            last = out[-1]
            if type(ev) is type(last) and isinstance(ev, _RECORDS):
                out[-1] = type(ev)(last.records + ev.records)
            elif isinstance(ev, Tick) and isinstance(last, Tick):
                out[-1] = ev
            else:
                out.append(ev)
        return out


def in_parts(records: list[dict], kind: type, size: int = 256) -> list[ShardEvent]:
    """Stored records as events of at most `size` records each."""
    return [kind(records[i:i + size]) for i in range(0, len(records), size)]
