"""The pool's queueing and merging rules, exercised on the scheduler alone: no worker
processes, no sockets, no event loop; the clock is a number the test moves."""
from __future__ import annotations

from concurrent.futures import Future

import orjson
import pytest

from sandbox_pool.outcome import CRASHED, ERROR, MEMORY, OK_TRUE, TIMEOUT, Outcome
from sandbox_pool.host.scheduler import Scheduler

A = "def evaluate(x):\n    return 'a'\n"
B = "def evaluate(x):\n    return 'b'\n"
C = "def evaluate(x):\n    return 'c'\n"


class Clock:
    def __init__(self, now: float = 100.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def submit(s: Scheduler, code: str, inputs: list, **kw) -> Future:
    fut = Future()
    s.submit(code, orjson.dumps(code), orjson.dumps(inputs), len(inputs), fut, **kw)
    return fut


def next_wire(s: Scheduler, free: int = 1):
    assert s.pending() and s.hold_until() is None
    return s.take(free)


def sent(wire) -> tuple[list, list]:
    """What the supervisor receives: the header ([id, n, code(, part sizes)]) and the inputs."""
    head, data = b"".join(wire.payload()).split(b"\n", 1)
    return orjson.loads(head), orjson.loads(data)


def everything(s: Scheduler, free: int = 1) -> list:
    wires = []
    while s.pending():
        wires.append(next_wire(s, free))
    return wires


# ---- merging -------------------------------------------------------------------------------------

def test_queued_jobs_of_the_same_code_go_out_as_one_wire():
    s = Scheduler()
    submit(s, A, ["a1"])
    submit(s, A, ["a2", "a3"])
    wire = next_wire(s)
    assert [p.code for p in wire.parts] == [A, A] and wire.n == 3
    assert sent(wire)[1] == ["a1", "a2", "a3"]    # each caller's inputs, in queue order
    assert not s.pending()


def test_jobs_of_different_code_are_never_merged():
    s = Scheduler()
    submit(s, A, ["a1"])
    submit(s, B, ["b1"])
    submit(s, A, ["a2"])
    submit(s, C, ["c1"])
    wires = everything(s)
    assert all(len({p.code for p in w.parts}) == 1 for w in wires)
    assert sorted(w.parts[0].code for w in wires) == sorted([A, B, C])
    assert [w.n for w in wires if w.parts[0].code == A] == [2]   # the two A jobs shared one fork


def test_a_merged_wire_never_exceeds_the_coalescing_cap():
    s = Scheduler(coalesce_max=4)
    for i in range(3):
        submit(s, A, [f"{i}a", f"{i}b"])
    assert [w.n for w in everything(s)] == [4, 2]


def test_the_queued_inputs_of_a_code_are_shared_out_over_the_free_workers():
    s = Scheduler()
    for i in range(4):
        submit(s, A, [i])
    first = next_wire(s, free=2)
    assert first.n == 2                          # half of the four queued inputs
    assert next_wire(s, free=1).n == 2            # the rest, to the one worker left


def test_each_part_of_a_merged_wire_is_announced_with_its_own_size():
    # The supervisor gives every part the CPU budget it would have alone.
    s = Scheduler()
    submit(s, A, ["a1"])
    submit(s, A, ["a2", "a3", "a4"])
    submit(s, A, ["a5", "a6"])
    head, inputs = sent(next_wire(s))
    assert head[1] == 6 and head[2] == A and head[3] == [1, 3, 2]
    assert inputs == ["a1", "a2", "a3", "a4", "a5", "a6"]


def test_a_job_sent_alone_carries_no_part_sizes():
    s = Scheduler()
    submit(s, A, ["a1", "a2"])
    head, inputs = sent(next_wire(s))
    assert head[1:] == [2, A] and inputs == ["a1", "a2"]


def test_each_caller_gets_the_verdicts_of_its_own_inputs():
    s = Scheduler()
    first = submit(s, A, ["a1"])
    second = submit(s, A, ["a2", "a3"])
    wire = next_wire(s)
    verdicts = [Outcome("ok", 1), Outcome("ok", 2), Outcome("ok", 3)]
    wire.resolve(verdicts, "out", 0.5)
    assert list(first.result()) == verdicts[:1] and list(second.result()) == verdicts[1:]
    assert first.result().output == "out" == second.result().output


def test_a_lost_wire_fails_every_input_of_every_caller_as_crashed():
    s = Scheduler()
    first = submit(s, A, ["a1"])
    second = submit(s, A, ["a2", "a3"])
    next_wire(s).fail("worker died")
    for fut, n in ((first, 1), (second, 2)):
        assert [(o.status, o.detail) for o in fut.result()] == [(CRASHED, "worker died")] * n


def test_a_job_its_caller_gave_up_is_not_sent():
    s = Scheduler()
    gone = submit(s, A, ["a1"])
    gone.cancel()
    assert not s.pending()
    gone_b = submit(s, B, ["b1"])
    submit(s, B, ["b2"])
    gone_b.cancel()
    wire = next_wire(s)
    assert sent(wire)[1] == ["b2"] and not s.pending()


# ---- urgency -------------------------------------------------------------------------------------

def test_urgent_jobs_go_before_every_queued_normal_job():
    s = Scheduler()
    submit(s, A, ["a"])
    submit(s, B, ["b"])
    submit(s, C, ["c"], urgent=True)
    assert [w.parts[0].code for w in everything(s)] == [C, A, B]


def test_urgent_jobs_keep_their_own_order():
    s = Scheduler()
    submit(s, A, ["a"], urgent=True)
    submit(s, B, ["b"], urgent=True)
    submit(s, C, ["c"])
    assert [w.parts[0].code for w in everything(s)] == [A, B, C]


# ---- the coalescing window -------------------------------------------------------------------------

def test_a_job_with_more_coming_waits_for_company_up_to_the_window():
    clock = Clock()
    s = Scheduler(window_s=0.05, clock=clock)
    submit(s, A, ["a1"], more_coming=True)
    assert s.pending() and s.hold_until() == pytest.approx(100.05)
    clock.now = 100.03
    submit(s, A, ["a2"], more_coming=True)
    assert s.hold_until() == pytest.approx(100.05)   # the window counts from the oldest job
    clock.now = 100.05
    wire = next_wire(s)                              # the window is over: it goes, with its company
    assert wire.n == 2 and not s.pending()


def test_the_window_never_holds_a_job_past_its_end():
    clock = Clock()
    s = Scheduler(window_s=0.05, clock=clock)
    submit(s, A, ["a1"], more_coming=True)
    clock.now = 100.2                                # no company came
    assert next_wire(s).n == 1


def test_a_job_without_the_hint_ends_the_wait_of_its_code():
    clock = Clock()
    s = Scheduler(window_s=5.0, clock=clock)
    submit(s, A, ["a1"], more_coming=True)
    submit(s, A, ["a2"])                             # the last of them
    assert next_wire(s).n == 2


def test_a_code_with_the_cap_queued_does_not_wait():
    s = Scheduler(coalesce_max=2, window_s=5.0, clock=Clock())
    submit(s, A, ["a1", "a2"], more_coming=True)
    assert next_wire(s).n == 2


def test_jobs_without_the_hint_never_wait():
    s = Scheduler(window_s=5.0, clock=Clock())
    submit(s, A, ["a1"])
    assert next_wire(s).n == 1


def test_without_a_window_nothing_waits():
    s = Scheduler(clock=Clock())
    submit(s, A, ["a1"], more_coming=True)
    assert next_wire(s).n == 1


def test_urgent_jobs_never_wait_and_pass_a_waiting_one():
    clock = Clock()
    s = Scheduler(window_s=5.0, clock=clock)
    submit(s, A, ["a1"], more_coming=True)
    submit(s, B, ["b1"], urgent=True, more_coming=True)
    assert next_wire(s).parts[0].code == B
    assert s.pending() and s.hold_until() == pytest.approx(105.0)   # A still waits for company


# ---- failures --------------------------------------------------------------------------------------

def _merged(s: Scheduler, sizes: list[int]):
    futs = [submit(s, A, [f"{k}.{i}" for i in range(n)]) for k, n in enumerate(sizes)]
    wire = next_wire(s)
    assert wire.n == sum(sizes) and len(wire.parts) == len(sizes)
    return futs, wire


def _verdicts(n: int, at: int, failure: Outcome) -> tuple[list, str]:
    outcomes = [OK_TRUE] * n
    outcomes[at] = failure
    return outcomes, "".join("R" if i == at else "T" for i in range(n))


@pytest.mark.parametrize("failure", [
    Outcome(TIMEOUT, None, "job exceeded the 2 s wall-clock limit"),
    Outcome(CRASHED, None, "job killed by signal 9"),
    Outcome(MEMORY, None, "job exceeded the 512 MB memory limit"),
])
def test_a_job_level_failure_sends_the_later_parts_back_to_run_alone(failure):
    s = Scheduler()
    futs, wire = _merged(s, [2, 1, 2])
    outcomes, tags = _verdicts(5, 2, failure)        # it hit the second part's input
    kept = s.rerun_bystanders(wire, outcomes, tags)
    assert kept == outcomes[:2]                      # the first part ran as it would have alone
    assert len(wire.parts) == 1                      # the wire now answers for its first part only
    wire.resolve(kept, "", 0.0)
    assert futs[0].done() and not futs[1].done() and not futs[2].done()
    reruns = everything(s)
    assert [(len(w.parts), w.n) for w in reruns] == [(1, 1), (1, 2)]   # alone, though same code
    assert [sent(w)[1] for w in reruns] == [["1.0"], ["2.0", "2.1"]]


def test_a_failure_in_the_first_part_still_reruns_the_others():
    s = Scheduler()
    futs, wire = _merged(s, [1, 1, 1])
    outcomes, tags = _verdicts(3, 0, Outcome(TIMEOUT, None, "job exceeded the 2 s wall-clock limit"))
    kept = s.rerun_bystanders(wire, outcomes, tags)
    assert kept == outcomes[:1] and len(wire.parts) == 1
    assert [w.n for w in everything(s)] == [1, 1]


def test_reruns_go_before_jobs_queued_meanwhile():
    s = Scheduler()
    _, wire = _merged(s, [1, 1])
    submit(s, B, ["b"])
    outcomes, tags = _verdicts(2, 1, Outcome(CRASHED, None, "job killed by signal 9"))
    s.rerun_bystanders(wire, outcomes, tags)
    assert [w.parts[0].code for w in everything(s)] == [A, B]


def test_a_rerun_job_is_not_merged_with_later_jobs_of_its_code():
    s = Scheduler()
    _, wire = _merged(s, [1, 1])
    outcomes, tags = _verdicts(2, 1, Outcome(CRASHED, None, "job killed by signal 9"))
    s.rerun_bystanders(wire, outcomes, tags)
    submit(s, A, ["later"])
    assert [sent(w)[1] for w in everything(s)] == [["1.0"], ["later"]]


@pytest.mark.parametrize("verdict", [
    Outcome(ERROR, None, "ZeroDivisionError: division by zero"),
    Outcome(MEMORY, None, "MemoryError"),                 # one input's own allocation, not the job's
])
def test_an_input_level_failure_costs_no_one_else_their_verdicts(verdict):
    s = Scheduler()
    futs, wire = _merged(s, [1, 1, 1])
    outcomes, tags = _verdicts(3, 1, verdict)
    assert s.rerun_bystanders(wire, outcomes, tags) == outcomes and len(wire.parts) == 3
    assert not s.pending()


def test_a_lone_job_is_never_rerun():
    s = Scheduler()
    submit(s, A, ["a1", "a2"])
    wire = next_wire(s)
    outcomes, tags = _verdicts(2, 0, Outcome(TIMEOUT, None, "job exceeded the 2 s wall-clock limit"))
    assert s.rerun_bystanders(wire, outcomes, tags) == outcomes and not s.pending()


def test_a_wire_that_never_ran_goes_back_to_the_head_of_the_queue_whole():
    s = Scheduler()
    _, wire = _merged(s, [1, 2])
    submit(s, B, ["b"])
    s.requeue(wire)
    again = next_wire(s)
    assert again.parts[0].code == A and sent(again)[1] == ["0.0", "1.0", "1.1"]
    assert next_wire(s).parts[0].code == B


def test_requeued_urgent_jobs_return_to_the_urgent_queue():
    s = Scheduler()
    submit(s, A, ["a"], urgent=True)
    wire = next_wire(s)
    submit(s, B, ["b"])
    submit(s, C, ["c"], urgent=True)
    s.requeue(wire)
    assert [w.parts[0].code for w in everything(s)] == [A, C, B]


def test_drain_hands_back_every_queued_job_and_empties_the_queues():
    s = Scheduler()
    normal = submit(s, A, ["a"])
    urgent = submit(s, B, ["b"], urgent=True)
    assert [j.future for j in s.drain()] == [urgent, normal]
    assert not s.pending()
