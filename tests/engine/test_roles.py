"""A server and model per role: the flags and the `[roles]` table, and a job whose judge runs on
a second simulator (its requests reach only that server; provenance names both models)."""
import argparse
import re
from pathlib import Path

import orjson
import pytest

from engine.cli import main
from engine.config import (Config, ConfigError, add_config_arguments, config_from_args, config_from_mapping,
                           load_config)
from engine.job import run_job
from engine.outcome import EXIT_USAGE
from engine.roles import CODER, JUDGE, RESPONDER, ROLES, WRITER
from engine.sim.config import LatencyModel, SimConfig
from engine.sim.server import SimServer
from tests.conftest import read_jsonl
from tests.fixtures import autoif_e2e as fx

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


def parse(argv: list[str]) -> Config:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    return config_from_args(parser.parse_args(argv))


# ------------------------------------------------------------------ settings

def test_flags_assign_servers_and_models_to_roles():
    cfg = parse(["--server", "http://main:1", "--role-server", "judge=http://j:1",
                 "--role-server", "judge=http://j:2,coder=https://c.example", "--role-model", "coder=qwen-coder"])
    assert cfg.roles.servers_for(JUDGE) == ["http://j:1", "http://j:2"]
    assert cfg.roles.servers_for(CODER) == ["https://c.example"]
    assert cfg.roles.servers_for(WRITER) == [] and cfg.roles.model_for(WRITER) is None
    assert cfg.roles.model_for(CODER) == "qwen-coder"
    # what each role's requests send: its own name; "default" on its own servers; else the run's
    named = parse(["--model", "small", "--role-server", "judge=http://j:1", "--role-model", "coder=big"])
    assert {r: named.request_model(r) for r in ROLES} == {
        WRITER: "small", CODER: "big", RESPONDER: "small", JUDGE: "default"}


def test_roles_table_in_the_config_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('servers = ["http://main:1"]\n'
                    '[roles]\njudge = "http://j:1"\nwriter = ["http://w:1", "http://w:2"]\n'
                    '[roles.coder]\nservers = "http://c:1"\nmodel = "qwen-coder"\n')
    cfg = load_config(path)
    assert cfg.roles.servers_for(JUDGE) == ["http://j:1"]
    assert cfg.roles.servers_for(WRITER) == ["http://w:1", "http://w:2"]
    assert (cfg.roles.servers_for(CODER), cfg.roles.model_for(CODER)) == (["http://c:1"], "qwen-coder")
    # the dump reads back as the same config
    assert config_from_mapping(tomllib.loads(cfg.dump())) == cfg


def test_role_servers_leave_the_hash_alone_and_role_models_change_it():
    base = Config()
    assert Config.from_flat(role_servers=["judge=http://j:1"]).config_hash() == base.config_hash()
    assert Config.from_flat(role_models=["judge=big"]).config_hash() != base.config_hash()
    assert (Config.from_flat(role_models=["judge=big"]).config_hash()
            != Config.from_flat(role_models=["judge=other"]).config_hash())


@pytest.mark.parametrize("data, why", [
    ({"roles": {"boss": "http://x:1"}}, "unknown key 'roles.boss'"),
    ({"roles": {"judge": "ftp://x"}}, "not an http(s) URL"),
    ({"roles": {"judge": {"server": "http://x:1"}}}, "unknown key 'roles.judge.server'"),
    ({"roles": {"judge": {"model": 7}}}, "expected a string"),
    ({"role_servers": ["judge"]}, "expected ROLE=VALUE"),
    ({"role_models": ["judge=a", "judge=b"]}, "one per role"),
])
def test_bad_roles_in_a_file_are_one_config_error(data, why):
    with pytest.raises(ConfigError, match=re.escape(why)) as err:
        config_from_mapping(data, where="c.toml")
    assert str(err.value).startswith("c.toml: ") and "\n" not in str(err.value)


@pytest.mark.parametrize("argv, why", [
    (["--role-server", "boss=http://x:1"], "--role-server: 'boss=http://x:1': unknown role 'boss' "
                                            "(roles: writer, coder, responder, judge)"),
    (["--role-server", "judge=not-a-url"], "--role-server: 'judge=not-a-url': not an http(s) URL"),
    (["--role-server", "judge=http://x:99999"], "port is not 1-65535"),
    (["--role-model", "policy=m"], "--role-model: 'policy=m': unknown role 'policy'"),
])
def test_bad_role_flags_are_one_line_and_exit_2(capsys, tmp_path, argv, why):
    try:
        code = main(["run", "--dry-run", "--output-dir", str(tmp_path / "run"), *argv])
    except SystemExit as stop:
        code = stop.code
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == EXIT_USAGE and len(lines) == 1, (code, lines)
    assert lines[0].startswith("autoif run: ") and why in lines[0], lines[0]
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ a job with a judge server

# The fixture's judge prompts (prompts/checkable, backtranslate, nli, score.txt begin so).
JUDGE_OPENINGS = ("You decide whether a constraint", "Below is a Python function",
                  "Compare two descriptions of a constraint", "You are grading an AI assistant's reply")
# LLM requests of the fixture job (tests/test_run_e2e.py derives them): the judge's are
# checkable 4 + back-translations 7 + NLI 7 + scores 10; the rest augment 1 + verifiers 5 + responses 6.
JUDGE_REQUESTS, OTHER_REQUESTS = 4 + 7 + 7 + 10, 1 + 5 + 6


def prompt_of(body: dict) -> str:
    if "messages" in body:
        return body["messages"][-1]["content"]
    return body.get("text") or body.get("prompt") or ""


def is_judge(body: dict) -> bool:
    return prompt_of(body).startswith(JUDGE_OPENINGS)


def sim(model: str) -> SimServer:
    return SimServer(SimConfig(responder="tests.fixtures.autoif_e2e:respond", model=model,
                               latency=LatencyModel(zero_latency=True)))


def sampling_requests(server: SimServer) -> list[dict]:
    """The bodies of the requests that asked for answers (not health or model probes)."""
    return [body for path, body in server.body_log if isinstance(body, dict) and prompt_of(body)]


async def test_judge_on_its_own_server(tmp_path):
    run_dir = tmp_path / "run"
    async with sim("policy-model") as policy, sim("judge-model") as judge:
        cfg = Config.from_flat(**fx.JOB, **fx.write_inputs(tmp_path / "inputs"), servers=[policy.url],
                               role_servers=[f"judge={judge.url}"], output_dir=str(run_dir))
        summary = await run_job(cfg, progress=False)
        assert summary["stopped"] == "completed" and summary["sink_items"] > 0

        to_policy, to_judge = sampling_requests(policy), sampling_requests(judge)
        assert len(to_judge) == JUDGE_REQUESTS and all(is_judge(b) for b in to_judge)
        assert len(to_policy) == OTHER_REQUESTS and not any(is_judge(b) for b in to_policy)
        assert policy.counters.received + judge.counters.received == JUDGE_REQUESTS + OTHER_REQUESTS
        # the run's counters add up both clients
        assert summary["client"]["requests"] == JUDGE_REQUESTS + OTHER_REQUESTS
        assert set(summary["client"]["servers"]) == {policy.url, judge.url}

        # provenance: the responder's model as `model`, every role's in `models`
        models = {WRITER: "policy-model", CODER: "policy-model", RESPONDER: "policy-model", JUDGE: "judge-model"}
        on_disk = orjson.loads((run_dir / "summary.json").read_bytes())
        assert on_disk["model"] == "policy-model" and on_disk["models"] == models
        verifiers = read_jsonl(run_dir / "exports" / "verifiers.jsonl")
        assert verifiers and all(v["models"] == models and v["model"] == "policy-model" for v in verifiers)
        sft = read_jsonl(run_dir / "exports" / "sft_trl.jsonl")
        assert sft and {r["provenance"]["model"] for r in sft} == {"policy-model"}

        # the same job again: every answer, the judge's too, comes from the run's cache
        again = await run_job(cfg, progress=False)
        assert again["funnel"] == summary["funnel"]
        assert (len(sampling_requests(policy)), len(sampling_requests(judge))) == (OTHER_REQUESTS, JUDGE_REQUESTS)

        # an online-DPO round samples afresh: its scores go to the judge, its responses to the policy
        await run_job(cfg, mode="online-dpo", rounds=1, progress=False)
        new_policy, new_judge = sampling_requests(policy)[OTHER_REQUESTS:], sampling_requests(judge)[JUDGE_REQUESTS:]
        assert new_policy and not any(is_judge(b) for b in new_policy)
        assert new_judge and all(prompt_of(b).startswith("You are grading") for b in new_judge)


async def test_a_role_model_is_sent_and_named(tmp_path):
    """A role with a model of its own on the run's servers: its requests name that model, the
    others the run's; provenance says which wrote what."""
    run_dir = tmp_path / "run"
    async with sim("policy-model") as policy:
        cfg = Config.from_flat(**fx.JOB, **fx.write_inputs(tmp_path / "inputs"), servers=[policy.url],
                               role_models=["judge=judge-7b"], output_dir=str(run_dir))
        summary = await run_job(cfg, progress=False)
        bodies = [b for b in sampling_requests(policy) if "model" in b]
        assert bodies and all(b["model"] == ("judge-7b" if is_judge(b) else "default") for b in bodies)
        assert sum(is_judge(b) for b in bodies) == JUDGE_REQUESTS
        assert summary["models"] == {WRITER: "policy-model", CODER: "policy-model", RESPONDER: "policy-model",
                                     JUDGE: "judge-7b"}


def test_autoif_stage_refuses_roles(tmp_path, capsys):
    """`autoif stage` asks one server: roles given to it are refused, not silently ignored."""
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("Do not use any commas\n")
    code = main(["stage", "augment", "--input", str(seeds), "--output", str(tmp_path / "out.jsonl"),
                 "--server", "http://127.0.0.1:9", "--role-server", "judge=http://127.0.0.1:9"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == EXIT_USAGE and len(lines) == 1 and "--role-server/--role-model" in lines[0], lines
    assert not (tmp_path / "out.jsonl").exists()


async def test_ray_shard_phases_use_the_roles_servers(tmp_path):
    """A Ray shard builds its engine as `autoif run` does: the phases, called without Ray, send
    the judge's requests to the judge's server and report its model for the driver's provenance."""
    from engine.distributed.worker import augment_events, shard_events
    from engine.records import Instruction
    from engine.run import Done, load_inputs

    async with sim("policy-model") as policy, sim("judge-model") as judge:
        cfg = Config.from_flat(**fx.JOB, **fx.write_inputs(tmp_path / "inputs"), servers=[policy.url],
                               role_servers=[f"judge={judge.url}"], output_dir=str(tmp_path / "run"))
        seeds, queries = load_inputs(cfg)
        done = [ev async for ev in augment_events(cfg, seeds, backend="sim", run_dir=tmp_path / "run")
                if isinstance(ev, Done)]
        instructions = [Instruction.from_dict(d) for d in done[-1].summary["instructions"]]
        assert instructions
        done += [ev async for ev in shard_events(cfg, instructions, index=0, n_shards=1, backend="sim",
                                                 run_dir=tmp_path / "run", queries=queries)
                 if isinstance(ev, Done)]
        to_policy, to_judge = sampling_requests(policy), sampling_requests(judge)
        assert len(to_judge) == JUDGE_REQUESTS and all(is_judge(b) for b in to_judge)
        assert len(to_policy) == OTHER_REQUESTS and not any(is_judge(b) for b in to_policy)
        for ev in done:
            assert ev.summary["served_models"] == {WRITER: "policy-model", CODER: "policy-model",
                                                   RESPONDER: "policy-model", JUDGE: "judge-model"}


async def test_an_unreachable_role_server_is_one_line_naming_the_role(tmp_path):
    import socket

    from engine.errors import JobError
    with socket.socket() as s:                 # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    async with sim("policy-model") as policy:
        cfg = Config.from_flat(**fx.JOB, **fx.write_inputs(tmp_path / "inputs"), servers=[policy.url],
                               role_servers=[f"coder=http://127.0.0.1:{closed}"], output_dir=str(tmp_path / "run"))
        with pytest.raises(JobError, match=r"^role coder: no LLM server answers: http://127\.0\.0\.1:") as err:
            await run_job(cfg, progress=False)
        assert "\n" not in str(err.value)
        assert not sampling_requests(policy)   # refused before any work
