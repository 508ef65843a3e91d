"""Pool behaviour: API and value semantics, pre-forked reuse, isolation between jobs, worker loss."""

import asyncio
import math
import os
import signal
import statistics
import subprocess
import sys
import time

import pytest
import pytest_asyncio

from sandbox_pool import DEFAULT_ALLOWED_MODULES, JobResult, Limits, Outcome, PoolConfig, SandboxPool

pytestmark = pytest.mark.asyncio(loop_scope="module")

HOSTILE = DEFAULT_ALLOWED_MODULES | {"os", "sys", "time", "builtins"}
TIMEOUT = 1.0


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool():
    async with SandboxPool(PoolConfig(workers=2, limits=Limits(timeout_s=TIMEOUT, allowed_modules=HOSTILE))) as p:
        yield p


async def test_values_and_types(pool):
    code = (
        "def evaluate(x):\n"
        "    return {'t': True, 'f': False, 'i': 7, 'fl': 2.5, 's': 'yes', 'n': None,\n"
        "            'big': 10**30, 'nan': float('nan'), 'inf': float('-inf')}[x]\n"
    )
    keys = ["t", "f", "i", "fl", "s", "n", "big", "nan", "inf"]
    res = await pool.evaluate(code, keys)
    assert isinstance(res, JobResult) and isinstance(res, list) and len(res) == len(keys)
    assert all(isinstance(o, Outcome) and o.ok and o.status == "ok" for o in res), res
    values = [o.value for o in res]
    assert values[:6] == [True, False, 7, 2.5, "yes", None]
    assert [type(v) for v in values[:6]] == [bool, bool, int, float, str, type(None)]
    assert values[6] == 10**30 and type(values[6]) is int
    assert math.isnan(values[7]) and values[8] == float("-inf")
    assert isinstance(res.elapsed_s, float) and 0 < res.elapsed_s < TIMEOUT
    with pytest.raises(Exception):
        res[0].status = "error"  # frozen


async def test_inputs_are_json_values(pool):
    code = "def evaluate(x):\n    return type(x).__name__ + ':' + str(x)\n"
    res = await pool.evaluate(code, (i for i in ["a\ud800b", 3, None, (1, 2), {"k": 1.5}]))  # any iterable
    assert [o.value for o in res] == ["str:a\ufffdb", "int:3", "NoneType:None", "list:[1, 2]", "dict:{'k': 1.5}"]
    with pytest.raises(TypeError):
        await pool.evaluate(code, [object()])  # not JSON: refused before anything is queued


async def test_bad_returns_never_touch_the_object(pool):
    code = (
        "class Evil:\n"
        "    def __bool__(self): raise RuntimeError('bool called')\n"
        "    def __eq__(self, other): raise RuntimeError('eq called')\n"
        "    __hash__ = None\n"
        "class S(str):\n"
        "    def __eq__(self, other): raise RuntimeError('eq called')\n"
        "def evaluate(x):\n"
        "    return {'evil': Evil(), 'list': [True], 'sub': S('a'), 'tuple': (1,)}[x]\n"
    )
    res = await pool.evaluate(code, ["evil", "list", "sub", "tuple"])
    assert [o.status for o in res] == ["bad_return"] * 4
    assert "Evil" in res[0].detail and "list" in res[1].detail and "S" in res[2].detail
    assert "called" not in " ".join(o.detail for o in res)


async def test_errors_are_one_line(pool):
    code = (
        "class Mute(Exception):\n"
        "    def __str__(self): raise RuntimeError('no str')\n"
        "def evaluate(x):\n"
        "    if x == 'value': raise ValueError('bad\\nvalue')\n"
        "    if x == 'mute': raise Mute()\n"
        "    if x == 'exit': raise SystemExit(3)\n"
        "    if x == 'kbd': raise KeyboardInterrupt\n"
        "    return x\n"
    )
    res = await pool.evaluate(code, ["value", "mute", "exit", "kbd", "fine"])
    assert [o.status for o in res] == ["error"] * 4 + ["ok"]
    assert res[0].detail == "ValueError: bad value"
    assert res[1].detail.startswith("Mute")
    assert "SystemExit" in res[2].detail and "KeyboardInterrupt" in res[3].detail
    assert all("\n" not in o.detail for o in res)


async def test_long_strings_truncated_and_output_captured(pool):
    code = "def evaluate(x):\n    print('seen', x)\n    return 'z' * 100000\n"
    res = await pool.evaluate(code, ["a", "b"])
    assert all(o.ok and o.value == "z" * 1024 for o in res)
    assert res.output == "seen a\nseen b\n"


async def test_load_time_failure_fails_every_input(pool):
    res = await pool.evaluate("x = 1 / 0\ndef evaluate(r):\n    return True\n", [1, 2])
    assert [o.status for o in res] == ["error", "error"]
    assert "ZeroDivisionError" in res[0].detail


async def test_allowed_modules_are_usable_without_an_import(pool):
    # Small models forget `import re`; the allowed modules are already bound in the globals.
    code = (
        "def evaluate(x):\n"
        "    return repr((bool(re.search(r'\\d', x)), x.strip(string.punctuation), json.dumps(x),\n"
        "                 math.floor(1.5), collections.Counter(x)['a'], 'os' in globals()))\n"
    )
    res = await pool.evaluate(code, ["a1a!"])
    assert res[0].ok, res
    assert res[0].value == repr((True, "a1a", '"a1a!"', 1, 2, True))  # os is allowed in this pool
    async with SandboxPool(PoolConfig(workers=1,
                                      limits=Limits(timeout_s=TIMEOUT))) as default:  # default allowlist: no os
        res = await default.evaluate(code, ["a1a!"])
    assert res[0].ok and res[0].value == repr((True, "a1a", '"a1a!"', 1, 2, False)), res


async def test_third_party_modules_run_in_their_own_zygote_and_stdlib_code_never_forks_from_it():
    # nltk (numpy) makes the image a job is forked from ~6x larger, and fork+exit cost grows with
    # it, so only code naming a third-party module goes to the zygote that imported them.
    nltk = pytest.importorskip("nltk")
    pytest.importorskip("langdetect")
    assert nltk
    sees = "def evaluate(x):\n    return ' '.join(k for k in ('nltk', 'langdetect', 're') if k in globals())\n"
    uses = ("import langdetect\ndef evaluate(x):\n"
            "    return f'{len(nltk.tokenize.wordpunct_tokenize(x))} {langdetect.detect(x)}'\n")
    text = ["This is plainly a sentence written in English, about the weather today."]
    async with SandboxPool(PoolConfig(workers=1, limits=Limits(timeout_s=TIMEOUT))) as default:
        # Alternating, twice: the lean zygote's kill(-1) after each job must not reach the other.
        for _ in range(2):
            lean, heavy = await default.evaluate(sees, text), await default.evaluate(uses, text)
            assert lean[0].value == "re", lean  # forked from the image without them
            # langdetect's profiles were loaded once in that zygote: the first detect() fits the
            # job's default CPU budget (it took 0.5 s of CPU when every job loaded them).
            assert heavy[0].ok and heavy[0].value == "14 en", heavy
        assert default.stats()["restarts"] == 0


async def test_an_allowed_third_party_module_that_fails_to_import_is_an_ordinary_job_error(tmp_path, monkeypatch):
    pkg = tmp_path / "broken_checker_lib"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise ImportError('this install is broken')\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # workers start with the pool's sys.path
    code = "import broken_checker_lib\ndef evaluate(x):\n    return True\n"
    async with SandboxPool(PoolConfig(workers=1,
                                      limits=Limits(timeout_s=TIMEOUT,
                                                    allowed_modules=DEFAULT_ALLOWED_MODULES | {"broken_checker_lib"}))) as p:
        res = await p.evaluate(code, ["a"])
        assert res[0].status == "error" and "broken_checker_lib" in res[0].detail, res
        assert (await p.evaluate("def evaluate(x):\n    return x\n", ["ok"]))[0].value == "ok"


async def test_checks_on_third_party_modules_get_a_larger_cpu_budget():
    # langdetect costs ~6 ms of CPU per reply; the engine's defaults (50 ms + 2 ms per input)
    # would cut an honest batch of them. The wall clock stays the backstop for both.
    pytest.importorskip("langdetect")
    replies = [f"Reply {i}: this is plainly a sentence in English about the weather and the sea. " * 30
               for i in range(40)]
    honest = "import langdetect\ndef evaluate(x):\n    return langdetect.detect(x) == 'en'\n"
    loops = "import langdetect\ndef evaluate(x):\n    while True:\n        pass\n"
    async with SandboxPool(PoolConfig(workers=1,
                                      limits=Limits(timeout_s=5.0, cpu_base_s=0.05, cpu_per_input_s=0.002))) as p:
        res = await p.evaluate(honest, replies)
        assert all(o.ok and o.value is True for o in res), [o for o in res if not o.ok][:1]
        res = await p.evaluate(loops, ["x", "y"])
    assert [o.status for o in res] == ["timeout", "timeout"]
    assert "budget of 0.54 s" in res[0].detail and "third-party" in res[0].detail, res[0].detail


async def test_partial_results_survive_a_timeout(pool):
    code = "def evaluate(x):\n    while x == 'hang':\n        pass\n    return x\n"
    res = await pool.evaluate(code, ["a", "b", "hang", "c"])
    assert [o.status for o in res] == ["ok", "ok", "timeout", "timeout"]
    assert [o.value for o in res[:2]] == ["a", "b"]


async def test_workers_are_prestarted_and_reused(pool):
    pids = pool.stats()["pids"]
    assert len(pids) == 2
    # Modules are already imported in the worker: the job does not import difflib, yet it is there.
    warm = "import sys\ndef evaluate(x):\n    return 'difflib' in sys.modules and 'statistics' in sys.modules\n"
    assert (await pool.evaluate(warm, [0]))[0].value is True

    empty = "def evaluate(x):\n    return True\n"
    await pool.evaluate(empty, [0])
    times = []
    for _ in range(50):
        t0 = time.perf_counter()
        res = await pool.evaluate(empty, [0])
        times.append(time.perf_counter() - t0)
        assert res[0].value is True
    assert pool.stats()["pids"] == pids  # same processes after 50 jobs: nothing was respawned

    starts = []
    for _ in range(5):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import re, json"], check=True)
        starts.append(time.perf_counter() - t0)
    job, start = statistics.median(times), statistics.median(starts)
    assert job < start / 2, f"per-job {job * 1e3:.2f} ms vs interpreter start {start * 1e3:.2f} ms"


async def test_no_state_leaks_between_jobs():
    mutate = (
        "import re, json, builtins, collections\n"
        "def evaluate(x):\n"
        "    re.search = lambda *a, **k: 'hijacked'\n"
        "    builtins.len = lambda o: -1\n"
        "    json.dumps = None\n"
        "    collections.Counter = None\n"
        "    builtins.sorted = None\n"
        "    return re.search('q', 'a') == 'hijacked' and len('abc') == -1\n"
    )
    check = (
        "import re, json, collections\n"
        "def evaluate(x):\n"
        "    return (re.search('q', 'a') is None and len('abc') == 3 and json.dumps(1) == '1'\n"
        "            and collections.Counter('aa')['a'] == 2 and sorted([2, 1]) == [1, 2])\n"
    )
    async with SandboxPool(PoolConfig(workers=1, limits=Limits(timeout_s=TIMEOUT, allowed_modules=HOSTILE))) as solo:
        assert (await solo.evaluate(mutate, [0]))[0].value is True  # the mutation did happen in its job
        res = await solo.evaluate(check, [0, 1])  # same (only) worker
        assert [o.value for o in res] == [True, True], res


async def test_urgent_jobs_overtake_queued_ones():
    # Cross-validation and audit results unlock an instruction's LLM work; a backlog of response
    # checks must not hold them up.
    done: list[str] = []
    slow = "import time\ndef evaluate(x):\n    time.sleep(0.05)\n    return x\n"

    async def run(name, code, urgent):
        await solo.evaluate(code, [name], urgent=urgent)
        done.append(name)

    async with SandboxPool(PoolConfig(workers=1, coalesce_max_inputs=1,
                                      limits=Limits(timeout_s=TIMEOUT, allowed_modules=HOSTILE))) as solo:
        backlog = [asyncio.create_task(run(f"n{i}", slow + f"# {i}\n", False)) for i in range(12)]
        await asyncio.sleep(0.12)  # the worker is busy with the first ones
        await asyncio.gather(run("urgent", slow, True), *backlog)
    assert done.index("urgent") <= 5, done  # queued behind the in-flight ones only, not all 12
    assert [n for n in done if n != "urgent"] == [f"n{i}" for i in range(12)]  # all ran, in order


async def test_batch_spreads_over_workers(pool):
    code = "import os, time\ndef evaluate(x):\n    time.sleep(0.25)\n    return os.readlink('/proc/self/ns/pid')\n"
    t0 = time.perf_counter()
    results = await pool.evaluate_many([(code, [i]) for i in range(4)])
    wall = time.perf_counter() - t0
    namespaces = {r[0].value for r in results}
    assert all(r[0].ok for r in results)
    assert len(namespaces) == 2  # both workers' PID namespaces served the batch
    assert wall < 4 * 0.25  # concurrent, not one after another
    # Order is preserved even when jobs differ in duration.
    codes = [(f"import time\ndef evaluate(x):\n    time.sleep({0.05 * (i % 3)})\n    return {i}\n", [0])
             for i in range(8)]
    assert [r[0].value for r in await pool.evaluate_many(codes)] == list(range(8))


async def test_stats_shape(pool):
    s = pool.stats()
    for key in ("jobs", "checks", "busy_s", "workers", "restarts", "isolation", "degraded",
                "ok", "timeout", "memory", "error", "crashed", "rejected", "bad_return"):
        assert key in s
    assert s["workers"] == 2 and s["checks"] >= s["jobs"] > 0 and s["busy_s"] > 0
    assert s["degraded"] == [k for k, v in s["isolation"].items() if not v]


async def test_job_sent_to_a_worker_that_dies_before_reading_it_is_requeued():
    # The race CI met: a job written to a worker already being killed. A stopped worker cannot
    # read it, so its death leaves our bytes unread (ECONNRESET): the job never ran, and must
    # run on the replacement instead of failing 'crashed'.
    async with SandboxPool(PoolConfig(workers=1, limits=Limits(timeout_s=5.0))) as p:
        [pid] = p.stats()["pids"]
        os.kill(pid, signal.SIGSTOP)
        job = asyncio.ensure_future(p.evaluate("def evaluate(x):\n    return x + 1\n", [1]))
        await asyncio.sleep(0.2)
        os.kill(pid, signal.SIGKILL)
        res = await asyncio.wait_for(job, 10)
        assert res[0].status == "ok" and res[0].value == 2
        s = p.stats()
        assert s["restarts"] == 1 and s["crashed"] == 0 and s["pids"] != [pid]


async def test_killed_worker_is_replaced_and_its_job_crashes():
    async with SandboxPool(PoolConfig(workers=2, limits=Limits(timeout_s=5.0, allowed_modules=HOSTILE))) as p:
        old = p.stats()["pids"]
        slow = asyncio.ensure_future(p.evaluate("import time\ndef evaluate(x):\n    time.sleep(3)\n", [0, 1]))
        await asyncio.sleep(0.3)
        for pid in old:  # one of them runs the job
            os.kill(pid, signal.SIGKILL)
        t0 = time.perf_counter()
        res = await asyncio.wait_for(slow, 2.0)
        assert time.perf_counter() - t0 < 1.0
        assert [o.status for o in res] == ["crashed", "crashed"] and "worker" in res[0].detail
        res = await asyncio.wait_for(p.evaluate("def evaluate(x):\n    return x + 1\n", [1]), 10)
        assert res[0].value == 2
        s = p.stats()
        assert s["restarts"] == 2 and s["crashed"] == 2
        assert len(s["pids"]) == 2 and not set(s["pids"]) & set(old)

        # The same when the zygote (PID 1 of a worker's namespace, the jobs' parent) is killed.
        for _ in range(200):  # until both replacements have started their zygotes
            children = [open(f"/proc/{pid}/task/{pid}/children").read().split() for pid in s["pids"]]
            if all(children):
                break
            await asyncio.sleep(0.05)
        zygotes = [int(c[0]) for c in children]
        slow = asyncio.ensure_future(p.evaluate("import time\ndef evaluate(x):\n    time.sleep(3)\n", [0]))
        await asyncio.sleep(0.3)
        for pid in zygotes:
            os.kill(pid, signal.SIGKILL)
        res = await asyncio.wait_for(slow, 2.0)
        assert res[0].status == "crashed"
        for _ in range(100):  # the idle worker reports its dead zygote without being asked
            if p.stats()["restarts"] == 4:
                break
            await asyncio.sleep(0.05)
        assert p.stats()["restarts"] == 4
        res = await asyncio.wait_for(p.evaluate("def evaluate(x):\n    return x + 1\n", [2]), 10)
        assert res[0].value == 3


async def test_jobs_run_at_lower_cpu_priority_than_the_engine(pool):
    """Verification must never make the event loop that feeds the server wait for a CPU."""
    code = "import os\ndef evaluate(r):\n    return os.getpriority(os.PRIO_PROCESS, 0)\n"
    out = await pool.evaluate(code, ["x"])
    assert out[0].status == "ok", out[0]
    assert out[0].value >= os.getpriority(os.PRIO_PROCESS, 0) + 5


async def test_jobs_of_the_same_code_are_coalesced_and_functions_never_share_a_process():
    # Many small jobs at once, as the responses stage sends them (one per function per query).
    fns = {name: "import os\ndef evaluate(x):\n    return f'%s {os.getpid()} {x}'\n" % name
           for name in ("A", "B", "C")}
    async with SandboxPool(PoolConfig(workers=1, limits=Limits(timeout_s=TIMEOUT, allowed_modules=HOSTILE))) as p:
        queries = [[f"q{q}r{r}" for r in range(8)] for q in range(12)]
        results = await asyncio.gather(*(p.evaluate_many([(fns[n], texts) for n in fns]) for texts in queries))
        stats = p.stats()
    pids_of: dict[str, set] = {n: set() for n in fns}
    for texts, per_fn in zip(queries, results):
        for name, res in zip(fns, per_fn):
            assert len(res) == len(texts) and all(o.ok for o in res), res
            got = [o.value.split() for o in res]
            assert [g[0] for g in got] == [name] * len(texts)
            assert [g[2] for g in got] == texts  # every caller gets its own inputs, in order
            pids_of[name].update(g[1] for g in got)
    assert not (pids_of["A"] & pids_of["B"] or pids_of["A"] & pids_of["C"] or pids_of["B"] & pids_of["C"])
    assert stats["jobs"] == 36 and stats["checks"] == 36 * 8
    assert stats["dispatched"] < 36  # fewer forks than jobs: queued jobs of one code went together


async def test_coalescing_is_capped_and_can_be_switched_off():
    code = "import os\ndef evaluate(x):\n    return os.getpid()\n"
    async with SandboxPool(PoolConfig(workers=1, coalesce_max_inputs=1,
                                      limits=Limits(timeout_s=TIMEOUT, allowed_modules=HOSTILE))) as p:
        res = await p.evaluate_many([(code, [i]) for i in range(6)])
        assert len({r[0].value for r in res}) == 6 and p.stats()["dispatched"] == 6
    async with SandboxPool(PoolConfig(workers=1, coalesce_max_inputs=4,
                                      limits=Limits(timeout_s=TIMEOUT, allowed_modules=HOSTILE))) as p:
        res = await p.evaluate_many([(code, [i, i]) for i in range(6)])
        assert all(r[0].value == r[1].value for r in res)
        assert 3 <= p.stats()["dispatched"] < 6  # at most two 2-input jobs per fork


async def test_jobs_told_more_is_coming_wait_for_company_until_the_last_one_arrives():
    """coalesce_window_s with more_coming (the responses stage, while other queries of the same
    instruction are still generating): jobs of one function arriving apart share one fork; the
    last one (sent without the hint) releases them at once; jobs without it never wait."""
    code = "import os\ndef evaluate(x):\n    return os.getpid()\n"
    async with SandboxPool(PoolConfig(workers=1, coalesce_window_s=5.0,
                                      limits=Limits(timeout_s=TIMEOUT, allowed_modules=HOSTILE))) as p:
        await p.evaluate(code, ["warm"])
        before = p.stats()["dispatched"]

        async def later(delay, texts, more):
            await asyncio.sleep(delay)
            return await p.evaluate(code, texts, more_coming=more)

        t = time.monotonic()
        a, b, c = await asyncio.gather(later(0, ["a1", "a2"], True), later(0.1, ["b1"], True), later(0.2, ["c1"], False))
        assert time.monotonic() - t < 2.0                    # released by the last, not the 5 s window
        assert p.stats()["dispatched"] == before + 1         # one fork for the three callers
        assert len({o.value for o in a + b + c}) == 1 and all(o.ok for o in a + b + c)
        t = time.monotonic()
        await p.evaluate(code, ["alone"])                   # no hint: no wait
        await p.evaluate_many([(code, ["urgent"])], urgent=True, more_coming=True)   # urgent: no wait
        assert time.monotonic() - t < 2.0
    async with SandboxPool(PoolConfig(workers=1, coalesce_window_s=0.3,
                                      limits=Limits(timeout_s=TIMEOUT, allowed_modules=HOSTILE))) as p:
        await p.evaluate(code, ["warm"])
        before = p.stats()["dispatched"]
        t = time.monotonic()
        await p.evaluate(code, ["x"], more_coming=True)     # no company comes: the window ends it
        assert 0.25 < time.monotonic() - t < 2.0 and p.stats()["dispatched"] == before + 1
    async with SandboxPool(PoolConfig(workers=1,
                                      limits=Limits(timeout_s=TIMEOUT, allowed_modules=HOSTILE))) as p:  # no window
        await p.evaluate(code, ["warm"])
        before = p.stats()["dispatched"]
        a, b = await asyncio.gather(later(0, ["a1", "a2"], True), later(0.1, ["b1"], True))
        assert p.stats()["dispatched"] == before + 2


async def test_a_coalesced_job_that_fails_does_not_cost_the_other_callers_their_verdicts():
    code = "def evaluate(x):\n    while x == 'loop':\n        pass\n    return x.upper()\n"
    async with SandboxPool(PoolConfig(workers=1, pipeline_depth=1, limits=Limits(timeout_s=TIMEOUT))) as p:
        res = await p.evaluate_many([(code, ["loop"]), (code, ["a", "b"]), (code, ["c"])])
        assert [o.status for o in res[0]] == ["timeout"]  # cut by its CPU budget
        assert [[o.value for o in r] for r in res[1:]] == [["A", "B"], ["C"]]  # run again alone
        s = p.stats()
        assert s["dispatched"] == 3 and s["jobs"] == 3 and s["checks"] == 4 and s["timeout"] == 1  # 1 + 2 alone
        # A part that the failure hit is run again too unless it ran first: here the loop is
        # in the second caller's input, so the third caller's check is run again alone.
        res = await p.evaluate_many([(code, ["d"]), (code, ["e", "loop"]), (code, ["f"])])
        assert [[o.status for o in r] for r in res] == [["ok"], ["ok", "timeout"], ["ok"]], res
        assert res[0][0].value == "D" and res[1][0].value == "E" and res[2][0].value == "F"


async def test_a_loop_in_a_merged_job_costs_its_own_part_budget_not_that_of_every_input():
    """Each caller's part of a merged job gets the CPU budget it would have alone: a loop in the
    first part is cut after 0.05 s + 0.01 s, not after the budget of all 401 merged inputs
    (4.06 s), and the other callers' inputs are run again alone."""
    code = "def evaluate(x):\n    while x == 'loop':\n        pass\n    return x.upper()\n"
    async with SandboxPool(PoolConfig(workers=1, pipeline_depth=1,
                                      limits=Limits(timeout_s=20.0, cpu_base_s=0.05, cpu_per_input_s=0.01))) as p:
        t = time.monotonic()
        res = await p.evaluate_many([(code, ["loop"]), (code, [f"a{i}" for i in range(200)]),
                                     (code, [f"b{i}" for i in range(200)])])
        wall = time.monotonic() - t
        assert p.stats()["dispatched"] == 3          # merged once, then the two others alone
    assert [o.status for o in res[0]] == ["timeout"]
    assert "CPU-time budget of 0.06 s" in res[0][0].detail, res[0][0].detail
    assert [o.value for o in res[1]] == [f"A{i}" for i in range(200)]
    assert [o.value for o in res[2]] == [f"B{i}" for i in range(200)]
    assert wall < 3.0, wall                          # 4 s of CPU would have been burnt before


async def test_a_loop_in_a_later_part_of_a_merged_job_is_cut_at_that_part_budget():
    code = "def evaluate(x):\n    while x == 'loop':\n        pass\n    return x.upper()\n"
    async with SandboxPool(PoolConfig(workers=1, pipeline_depth=1,
                                      limits=Limits(timeout_s=20.0, cpu_base_s=0.05, cpu_per_input_s=0.01))) as p:
        res = await p.evaluate_many([(code, [f"a{i}" for i in range(300)]), (code, ["x", "loop"]),
                                     (code, ["c"])])
    assert [o.value for o in res[0]] == [f"A{i}" for i in range(300)]
    assert [o.status for o in res[1]] == ["ok", "timeout"] and res[1][0].value == "X"
    assert "CPU-time budget of 0.07 s" in res[1][1].detail, res[1][1].detail   # 0.05 + 2 x 0.01
    assert res[2][0].value == "C"


async def test_workers_that_do_not_start_in_time_are_one_runtime_error():
    # The job turns a RuntimeError from the pool into one line ("sandbox pool: ..."), not a traceback.
    pool = SandboxPool(PoolConfig(workers=1, start_timeout_s=0.001))
    with pytest.raises(RuntimeError, match="did not start within 0.001 s"):
        await pool.start()
    assert pool.stats()["pids"] == []          # the workers it started are gone with it
