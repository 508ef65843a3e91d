"""Which queued caller jobs a worker runs next, and how they are merged into one wire.

Plain data and method calls: no sockets, no processes, no event loop. A job's future is
anything with done() and set_result() (an asyncio or a concurrent.futures Future), and the
clock is injected, so every rule here can be exercised directly.

The rules:
- Urgent jobs go before every queued job that is not urgent.
- Queued jobs of the same code (and only of the same code) are merged into one wire, up to
  an even share of that code's queued inputs over the free workers and at most
  coalesce_max inputs: while workers are idle jobs still spread over them, and the busier
  the pool the larger the merged jobs.
- A normal job whose caller said more of its code is coming waits up to window_s after it
  was queued for company, unless its code already has coalesce_max inputs queued or a queued
  job of that code came without the hint.
- A merged wire tells its supervisor each part's size, so each caller's inputs get the CPU
  budget they would have alone.
- After a job-level failure (timeout, crash, job OOM kill) the parts from the one it hit on,
  except the first part, are run again alone (solo): whatever cut them may have been another
  caller's input. A wire that never ran goes back to the head of its queue.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable

from ..outcome import CRASHED, MEMORY, TIMEOUT, JobResult, Outcome


class Job:
    """One caller's (code, inputs), waiting for a worker."""

    __slots__ = ("code", "code_json", "data", "n", "future", "taken", "solo", "queue", "queued_at",
                 "more_coming")

    def __init__(self, code: str, code_json: bytes, data: bytes, n: int, future, queue: deque,
                 queued_at: float, more_coming: bool = False):
        self.queued_at = queued_at
        self.more_coming = more_coming  # the caller expects more jobs of this code soon
        self.code = code
        self.code_json = code_json
        self.data = data  # the inputs as one JSON array
        self.n = n
        self.future = future
        self.taken = False  # sent (possibly coalesced into an earlier job of the same code)
        self.solo = False  # runs alone: it lost its verdicts to another job's failure once
        self.queue = queue  # the urgent or normal queue: where it goes back if requeued


class _SameCode:
    """Queued jobs of one code, oldest first (entries already taken are skipped lazily)."""

    __slots__ = ("jobs", "inputs")

    def __init__(self):
        self.jobs: deque[Job] = deque()
        self.inputs = 0  # inputs of the jobs not yet taken


class Wire:
    """What one worker runs in one fork: one or more caller jobs of the same code, inputs
    concatenated. Only identical code is ever coalesced, so no two functions share a process."""

    __slots__ = ("id", "parts", "n", "started")

    def __init__(self, wire_id: int, parts: list[Job], n: int):
        self.id = wire_id
        self.parts = parts
        self.n = n
        self.started = 0.0  # when it became the head of its worker's queue (its deadline counts from then)

    def payload(self) -> list[bytes]:
        # [id, n, code(, part sizes)] newline inputs: the supervisor passes the inputs on without
        # decoding them. The part sizes give each caller's inputs the CPU budget they would have
        # alone, so a loop in one part cannot burn the budget of all the merged inputs.
        if len(self.parts) == 1:
            return [b"[%d,%d," % (self.id, self.n), self.parts[0].code_json, b"]\n", self.parts[0].data]
        data = b"[" + b",".join([p.data[1:-1] for p in self.parts]) + b"]"
        sizes = b",".join(b"%d" % p.n for p in self.parts)
        return [b"[%d,%d," % (self.id, self.n), self.parts[0].code_json, b",[%s]]\n" % sizes, data]

    def resolve(self, outcomes: list, output: str, elapsed: float) -> None:
        at = 0
        for p in self.parts:
            if not p.future.done():
                p.future.set_result(JobResult(outcomes[at:at + p.n], output, elapsed))
            at += p.n

    def bystanders(self, outcomes: list, tags: str) -> int:
        """How many trailing parts to run again alone after a job-level failure (timeout,
        crash, OOM kill): every part from the one it hit on, except the first part, whose
        inputs ran first in a fresh process exactly as they would have alone. Whatever cut
        a later part may have been another caller's input or the merged job's size."""
        if len(self.parts) == 1:
            return 0
        i = tags.find("R")
        while i >= 0:
            o = outcomes[i]
            if o.status in (TIMEOUT, CRASHED) or (o.status == MEMORY and o.detail.startswith("job ")):
                break
            i = tags.find("R", i + 1)
        if i < 0:
            return 0
        at, k = 0, 0
        for k, p in enumerate(self.parts):
            if at + p.n > i:
                break
            at += p.n
        return len(self.parts) - max(k, 1)

    def fail(self, reason: str) -> None:
        crashed = Outcome(CRASHED, None, reason)
        self.resolve([crashed] * self.n, "", 0.0)


class Scheduler:
    """The urgent and normal queues, and the merging of their jobs into wires."""

    def __init__(self, coalesce_max: int = 256, window_s: float = 0.0,
                 clock: Callable[[], float] = time.monotonic):
        self.coalesce_max = max(1, int(coalesce_max))
        self.window_s = max(0.0, float(window_s))
        self._clock = clock
        self._queue: deque[Job] = deque()
        # Jobs whose results gate more LLM work (cross-validation, audit) go first: a response
        # check only gates its own judging, while a new instruction's checks gate all of its
        # queries' generation.
        self._urgent: deque[Job] = deque()
        self._by_code: dict[str, _SameCode] = {}
        self.last_id = 0  # id of the latest wire

    def submit(self, code: str, code_json: bytes, data: bytes, n: int, future, *,
               urgent: bool = False, more_coming: bool = False) -> Job:
        """Queue one job; only normal jobs wait for company."""
        queue = self._urgent if urgent else self._queue
        job = Job(code, code_json, data, n, future, queue, self._clock(), more_coming and not urgent)
        queue.append(job)
        self._index(job, at_end=True)
        return job

    def pending(self) -> bool:
        """Whether a queued job still needs a worker."""
        self._prune(self._urgent)
        self._prune(self._queue)
        return bool(self._urgent or self._queue)

    def hold_until(self) -> float | None:
        """The clock time until which the next job waits for company; None when it may go now.
        Call after pending()."""
        if self._urgent or not self.window_s or not self._queue:
            return None
        head = self._queue[0]
        due = head.queued_at + self.window_s
        if not head.more_coming or head.solo or self._clock() >= due:
            return None
        same = self._by_code[head.code]
        if same.inputs >= self.coalesce_max or any(not j.more_coming for j in same.jobs if not j.taken):
            return None
        return due

    def take(self, free_slots: int) -> Wire:
        """The next job plus queued jobs of the same code (oldest first), as one wire. Call
        after pending(); `free_slots`: how many workers could take a wire now (at least 1)."""
        job = (self._urgent or self._queue).popleft()  # live: pending() pruned up to it
        self.last_id += 1
        if job.solo:
            job.taken = True
            return Wire(self.last_id, [job], job.n)
        same = self._by_code[job.code]
        share = min(self.coalesce_max, -(-same.inputs // max(1, free_slots)))
        job.taken = True
        same.inputs -= job.n
        parts, n = [job], job.n
        jobs = same.jobs
        while jobs:
            other = jobs[0]
            if other.taken or other.future.done():
                jobs.popleft()
                if not other.taken:
                    same.inputs -= other.n
                    other.taken = True
                continue
            if n + other.n > share:
                break
            jobs.popleft()
            other.taken = True
            same.inputs -= other.n
            parts.append(other)
            n += other.n
        if not jobs:
            del self._by_code[job.code]
        return Wire(self.last_id, parts, n)

    def requeue(self, wire: Wire) -> None:
        """A wire's jobs back at the head of their queues, in order: they never ran."""
        for job in reversed(wire.parts):
            job.taken = False
            job.queue.appendleft(job)
            if not job.solo:
                self._index(job, at_end=False)

    def rerun_bystanders(self, wire: Wire, outcomes: list, tags: str) -> list:
        """Requeue, to run alone, the parts a job-level failure may have cost their verdicts
        (Wire.bystanders); drop them from `wire`. Returns the outcomes of the parts that stay."""
        rerun = wire.bystanders(outcomes, tags)
        if not rerun:
            return outcomes
        keep = wire.parts[:-rerun]
        for job in reversed(wire.parts[-rerun:]):
            job.solo, job.taken = True, False
            job.queue.appendleft(job)
        wire.parts = keep
        return outcomes[:sum(p.n for p in keep)]

    def drain(self) -> list[Job]:
        """Every queued job, urgent ones first; the queues are left empty."""
        jobs = [*self._urgent, *self._queue]
        self._urgent.clear()
        self._queue.clear()
        self._by_code.clear()
        return jobs

    def _index(self, job: Job, at_end: bool) -> None:
        same = self._by_code.get(job.code)
        if same is None:
            same = self._by_code[job.code] = _SameCode()
        if at_end:
            same.jobs.append(job)
        else:
            same.jobs.appendleft(job)
        same.inputs += job.n

    def _prune(self, queue: deque) -> None:
        """Drop the jobs at the head of `queue` that need no worker any more: coalesced into an
        earlier wire already, or given up by their caller."""
        while queue and (queue[0].taken or queue[0].future.done()):
            job = queue.popleft()
            if not job.taken:
                job.taken = True
                if not job.solo:
                    self._by_code[job.code].inputs -= job.n
