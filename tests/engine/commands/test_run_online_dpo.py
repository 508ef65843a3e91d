"""`autoif run --mode online-dpo`: responses, scoring and DPO export again per round, against
the policy server, on the verified instructions of a finished run; resumable like a run."""
import orjson

from engine.job import JobError, run_job
from engine.config import Config
from engine.sim.config import LatencyModel, SimConfig
from engine.sim.server import SimServer
from tests.conftest import read_jsonl
from tests.fixtures import autoif_e2e as fx


def pair_view(rec: dict) -> tuple[str, str, str]:
    return (orjson.dumps(rec["prompt"]).decode(), orjson.dumps(rec["chosen"]).decode(),
            orjson.dumps(rec["rejected"]).decode())


async def test_online_dpo_rounds_sample_afresh_and_resume(tmp_path):
    sim_cfg = SimConfig(responder="tests.fixtures.autoif_e2e:respond",
                        latency=LatencyModel(zero_latency=True))
    async with SimServer(sim_cfg) as sim:
        cfg = Config.from_flat(**fx.JOB, **fx.write_inputs(tmp_path / "inputs"), servers=[sim.url],
                               output_dir=str(tmp_path / "run"))
        run_dir = tmp_path / "run"

        # online DPO needs the verified instructions of a full run first
        try:
            await run_job(cfg, mode="online-dpo", rounds=1, progress=False)
            raise AssertionError("online-dpo ran without verified instructions")
        except JobError as exc:
            assert "no verified instructions" in str(exc)

        full = await run_job(cfg, progress=False)
        after_full = sim.counters.received
        # the requests of the stages an online round repeats: one per (instruction, query)
        # task for its K responses, one per response that reached the judge
        per_round = full["funnel"]["responses"]["in"] + full["funnel"]["scoring.response"]["in"]
        query_pairs = {pair_view(r) for r in read_jsonl(run_dir / "exports" / "dpo_trl.jsonl")
                       if r["provenance"]["level"] == "query"}
        assert query_pairs, "the fixture must yield query-level pairs"

        await run_job(cfg, mode="online-dpo", rounds=2, progress=False)
        # every round sends its own requests: none is answered from the full run's cache
        assert sim.counters.received - after_full == 2 * per_round
        for r in (1, 2):
            rows = read_jsonl(run_dir / "online_dpo" / f"round_{r:03d}" / "dpo_trl.jsonl")
            assert {row["provenance"]["level"] for row in rows} == {"query"}
            # the scripted policy answers the same prompts the same way, so each round's
            # pairs are the full run's query-level pairs, each once
            assert sorted(pair_view(row) for row in rows) == sorted(query_pairs)
            assert (run_dir / f"summary_online_round_{r:03d}.json").is_file()

        # the same command again: every round's answers come from the state store
        sent = sim.counters.received
        await run_job(cfg, mode="online-dpo", rounds=2, progress=False)
        assert sim.counters.received == sent
