"""RunStore: a run directory's records by what they are, over its state database.

Which label each kind of record is stored under, and which meta keys a run keeps, is this
module's business alone: callers ask for verified instructions, final results, sampled prompts
or an online round's results, so no label string leaves it.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable, Iterator

import orjson

from engine.config import Config
from engine.errors import JobError
from engine.records import ConflictPair, Instruction, QueryResult, SampledPrompt, VerifiedInstruction
from engine.roles import RESPONDER, ROLES, unnamed
from engine.state import StateStore

# Record labels, as older run directories carry them.
_AUGMENTED = "augment"
_VERIFIED = "backtranslate"
_FINAL = "final"
_SAMPLED = "sampled"
_CONFLICT = "conflict"

_CONFIG_HASH = "config_hash"
_SERVED_MODEL = "served_model"
_SERVED_MODELS = "served_models"    # role -> the name its server reported (JSON)
_QUERY_GRANTS = "query_grants"
_COMPOSE_GROUPS = "compose_groups"
_RUN_KIND = "run_kind"
_PHASE_DONE = "phase_done"          # "1" once a shard phase finished (completed, not drained)
_PHASE_INPUT = "phase_input"        # hash of the phase's input ids
_PHASE_SUMMARY = "phase_summary"    # the phase's summary (JSON)


def input_hash(ids: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:16]


class RunStore:
    """One run directory's records, LLM cache and meta. `state` is the SQLite store beneath,
    for the LLM cache (engine.cache.CachedLLM) and tools that read it directly."""

    def __init__(self, state: StateStore) -> None:
        self.state = state

    @classmethod
    def open(cls, cfg: Config, run_dir: Path) -> "RunStore":
        """The run's state; refuses a run directory made with other data-affecting settings."""
        run_dir.mkdir(parents=True, exist_ok=True)
        state = StateStore(run_dir / "state.sqlite")
        h = cfg.config_hash()
        old = state.get_meta(_CONFIG_HASH)
        if old is not None and old != h:
            state.close()
            raise JobError(f"{run_dir} holds a run with another configuration (hash {old}, now {h}); "
                           "use another --output-dir to start a new run")
        state.set_meta(_CONFIG_HASH, h)
        return cls(state)

    def close(self) -> None:
        self.state.close()

    def __enter__(self) -> "RunStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- records --------------------------------------------------------------------------
    def put_augmented(self, records: list[Instruction]) -> int:
        return self.state.put_records(records, _AUGMENTED)

    def augmented(self) -> Iterator[Instruction]:
        return self.state.iter_records(Instruction, _AUGMENTED)

    def put_verified(self, records: list[VerifiedInstruction]) -> int:
        return self.state.put_records(records, _VERIFIED)

    def verified(self) -> Iterator[VerifiedInstruction]:
        return self.state.iter_records(VerifiedInstruction, _VERIFIED)

    def put_results(self, records: list[QueryResult]) -> int:
        return self.state.put_records(records, _FINAL)

    def results(self) -> Iterator[QueryResult]:
        return self.state.iter_records(QueryResult, _FINAL)

    def count_results(self) -> int:
        return self.state.count_records(QueryResult, _FINAL)

    def put_sampled(self, records: list[SampledPrompt]) -> int:
        return self.state.put_records(records, _SAMPLED)

    def sampled(self) -> Iterator[SampledPrompt]:
        return self.state.iter_records(SampledPrompt, _SAMPLED)

    def put_conflicts(self, records: list[ConflictPair]) -> int:
        return self.state.put_records(records, _CONFLICT)

    def conflicts(self) -> Iterator[ConflictPair]:
        return self.state.iter_records(ConflictPair, _CONFLICT)

    def put_round_results(self, round_: int, records: list[QueryResult]) -> int:
        return self.state.put_records(records, f"online_round_{round_}")

    def save_funnel(self, snapshot: dict) -> None:
        self.state.save_funnel(snapshot)

    # -- meta -----------------------------------------------------------------------------
    @property
    def served_model(self) -> str | None:
        return self.state.get_meta(_SERVED_MODEL)

    @served_model.setter
    def served_model(self, name: str) -> None:
        self.state.set_meta(_SERVED_MODEL, name)

    @property
    def served_models(self) -> dict[str, str]:
        stored = self.state.get_meta(_SERVED_MODELS)
        return orjson.loads(stored) if stored else {}

    @served_models.setter
    def served_models(self, names: dict[str, str]) -> None:
        self.state.set_meta(_SERVED_MODELS, orjson.dumps(names).decode())

    def model_names(self, cfg: Config) -> dict[str, str]:
        """Each role's model (engine.roles), as provenance names it: as given, else as its
        server named it."""
        served = self.served_models
        names = {}
        for role in ROLES:
            name = cfg.request_model(role)
            if unnamed(name):
                on_run_servers = not cfg.roles.servers_for(role)
                name = served.get(role) or (on_run_servers and self.served_model) or name
            names[role] = name
        return names

    def model_name(self, cfg: Config) -> str:
        """The model of the run's provenance: the responder's, which wrote the SFT and DPO rows."""
        return self.model_names(cfg)[RESPONDER]

    def _json_meta(self, key: str):
        stored = self.state.get_meta(key)
        return orjson.loads(stored) if stored else None

    def _set_json_meta(self, key: str, value: object) -> None:
        self.state.set_meta(key, orjson.dumps(value).decode())

    @property
    def query_grants(self) -> dict | None:
        return self._json_meta(_QUERY_GRANTS)

    @query_grants.setter
    def query_grants(self, grants: dict) -> None:
        self._set_json_meta(_QUERY_GRANTS, grants)

    @property
    def compose_groups(self) -> list | None:
        """The groups of instruction ids the compose stage made (engine.stages.compose)."""
        return self._json_meta(_COMPOSE_GROUPS)

    @compose_groups.setter
    def compose_groups(self, groups: list) -> None:
        self._set_json_meta(_COMPOSE_GROUPS, groups)

    def claim(self, kind: str, what: str) -> None:
        """Marks the directory as holding one kind of run ("single" or "sharded"); a directory
        that holds the other kind is refused, so two kinds of run never merge their records."""
        old = self.state.get_meta(_RUN_KIND)
        if old is not None and old != kind:
            raise JobError(f"{what} holds a {old} run; a {kind} run cannot resume it "
                           "(use another --output-dir)")
        if old is None:
            self.state.set_meta(_RUN_KIND, kind)

    def get_meta(self, key: str) -> str | None:
        return self.state.get_meta(key)

    def set_meta(self, key: str, value: str) -> None:
        self.state.set_meta(key, value)

    # -- a finished phase (Ray shards replay it instead of running it again) ------------------
    def finished_summary(self, ids: str) -> dict | None:
        """The stored summary when the phase with these inputs finished before, else None."""
        if self.state.get_meta(_PHASE_DONE) == "1" and self.state.get_meta(_PHASE_INPUT) == ids:
            return orjson.loads(self.state.get_meta(_PHASE_SUMMARY) or "{}")
        return None

    def finish_phase(self, ids: str, summary: dict) -> None:
        self.state.set_meta(_PHASE_SUMMARY, orjson.dumps(summary, default=str).decode())
        self.state.set_meta(_PHASE_INPUT, ids)
        self.state.set_meta(_PHASE_DONE, "1")
