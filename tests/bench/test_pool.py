"""The pool benchmark's building blocks: its workload has the pipeline's shape, its CPU
accounting sees reaped descendants, and its baselines give the same verdicts."""
from __future__ import annotations

import os
import time

import pytest

from bench import baselines, common, workload


def test_stream_has_the_responses_stage_shape():
    s = workload.stream(6, seed=3)
    assert len(s.queries) == 6 * workload.QUERIES_PER_INSTRUCTION
    for start in range(0, len(s.queries), workload.QUERIES_PER_INSTRUCTION):
        block = s.queries[start:start + workload.QUERIES_PER_INSTRUCTION]
        codes = [code for code, _ in block[0]]
        assert 3 <= len(codes) <= 8 and len(set(codes)) == len(codes)
        for query in block:   # every query of an instruction runs the same functions...
            assert [code for code, _ in query] == codes
            texts = {id(inputs) for _, inputs in query}
            assert len(texts) == 1 and len(query[0][1]) == workload.RESPONSES_PER_QUERY
    every_input = [t for q in s.queries for t in q[0][1]]
    assert len(set(every_input)) == len(every_input)          # ...on responses never seen before
    assert s.checks == sum(len(q) for q in s.queries) * workload.RESPONSES_PER_QUERY


@pytest.mark.parametrize("size", [1, 8, 64])
def test_fixed_jobs_have_exactly_size_distinct_inputs_and_distinct_code(size):
    jobs = workload.fixed_jobs(size, 30)
    assert len(jobs) == 30 and all(len(inputs) == size for _, inputs in jobs)
    assert len({code for code, _ in jobs}) == 30
    flat = [t for _, inputs in jobs for t in inputs]
    assert len(set(flat)) == len(flat)


def test_every_verifier_family_runs_and_splits_responses():
    texts = workload.Responses(5).take(300)
    verdicts = baselines.inprocess([(code, texts) for code in workload.VERIFIERS.values()])
    for v in verdicts:
        assert all(type(x) is bool for x in v)
    assert sum(any(v) and not all(v) for v in verdicts) > len(verdicts) // 2  # mostly discriminating


def test_tree_cpu_counts_a_reaped_grandchild():
    """A child that forks, lets its own child burn CPU, and reaps it: the tree carries that CPU."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        inner = os.fork()
        if inner == 0:
            t = time.process_time()
            while time.process_time() - t < 0.3:
                pass
            os._exit(0)
        os.waitpid(inner, 0)
        os.write(w, b"x")
        time.sleep(30)                  # stays alive, holding the reaped child's CPU in cutime
        os._exit(0)
    os.close(w)
    try:
        assert os.read(r, 1) == b"x"
        assert common.tree_cpu_s([pid]) >= 0.25
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)


def test_baselines_agree_per_core():
    jobs = workload.fixed_jobs(8, 12, seed=4)
    ref = baselines.per_core(baselines.inprocess, jobs, 2, 0)
    assert ref.wall_s > 0 and ref.cpu_s > 0
    assert ref.results == baselines.inprocess(jobs)                    # order kept across processes
    sample = jobs[:4]
    assert baselines.per_core(baselines.fresh, sample, 2, 0).results == ref.results[:4]
    if baselines.check_correctness is None:
        pytest.skip(baselines.HUMANEVAL_MISSING)
    items = [(baselines.humaneval_problem(i, jobs[i][1], ref.results[i]), jobs[i][0]) for i in range(4)]
    assert baselines.per_core(baselines.humaneval, items, 2, 0).results == [True] * 4
    wrong = [(baselines.humaneval_problem(0, jobs[0][1], [not v for v in ref.results[0]]), jobs[0][0])]
    assert baselines.humaneval(wrong) == [False]                       # a disagreement shows


@pytest.mark.parametrize("name", ["pool", "pipeline", "reward", "overlap", "client", "scale", "quality",
                                  "realmodel"])
def test_every_benchmark_module_imports(name):
    # Benchmarks run outside the suite; a rename that breaks one must still fail here.
    import importlib

    module = importlib.import_module(f"bench.{name}")
    assert callable(module.main)
