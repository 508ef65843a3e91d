"""The AutoIF pipeline stages, in pipeline order. Each implements engine.stage.Stage.

Each stage takes its settings in its constructor, and `from_config` builds it from a Config;
`default_stages` here is the one place that lists the chain.
"""
from __future__ import annotations

from typing import Callable, Sequence

from engine.config import Config
from engine.records import ConflictPair, Instruction, Query, QueryResult
from engine.stages.audit import AuditStage
from engine.stages.augment import AugmentStage, load_seed_instructions, make_seed_batches
from engine.stages.backtranslate import BackTranslateStage
from engine.stages.base import Sampling
from engine.stages.compose import ComposedGroups, ComposeStage
from engine.stages.crossval import CrossValStage
from engine.stages.queries import QueryBudget, QueryJoinStage, load_queries, run_queries
from engine.stages.responses import SAMPLED, ResponseStage
from engine.stages.scoring import ScoreStage
from engine.stages.verifiers import VerifierStage

__all__ = [
    "AugmentStage", "VerifierStage", "CrossValStage", "BackTranslateStage", "AuditStage",
    "ComposeStage", "ComposedGroups", "QueryJoinStage", "QueryBudget", "ResponseStage", "ScoreStage", "Sampling", "load_seed_instructions",
    "make_seed_batches", "load_queries", "CHAIN", "SAMPLED", "default_stages",
]

# the stage names of a full run, in order (SeedBatch in, QueryResult out)
CHAIN = ("augment", "verifiers", "crossval", "backtranslate", "audit", "queries", "responses",
         "scoring")
_NEED_QUERIES = ("verifiers", "crossval", "audit", "queries")
# Composition (config.compose) runs between these two when both are in a run's stages; a run
# that does not compose runs the chain without it, exactly as it ran before composition existed.
COMPOSE, COMPOSE_AFTER = "compose", "audit"


def with_compose(cfg: Config, names: Sequence[str]) -> tuple[str, ...]:
    """`names` with the compose stage after the audit when the run composes."""
    names = tuple(n for n in names if n != COMPOSE)
    if not cfg.compose.enabled or COMPOSE_AFTER not in names:
        return names
    i = names.index(COMPOSE_AFTER) + 1
    return (*names[:i], COMPOSE, *names[i:])


def default_stages(cfg: Config, seeds: Sequence[Instruction] | None = None,
                   queries: Sequence[Query] | None = None, names: Sequence[str] = CHAIN,
                   on_graded: Callable[[QueryResult], None] | None = None,
                   query_budget: QueryBudget | None = None,
                   on_conflict: Callable[[ConflictPair], None] | None = None,
                   compose_groups: ComposedGroups | None = None) -> list:
    """The stages `names` (default: the whole chain) with their settings from `cfg`.

    `seeds`: the run's seed instructions, indexed by augment's deduper up front (None: read from
    config.seeds_path); `queries`: the query pool (None: read from config.queries_path). A file
    is read only when a stage needs it. `on_graded`: given every graded prompt's result (the
    responses stage), kept or not, for the GRPO prompt set; `query_budget`: the grants of
    config.max_queries so far (a resumed run's, from its store; None: a fresh one);
    `on_conflict`: given each conflicting pair the compose stage finds (with config.compose on,
    where it is added after the audit); `compose_groups`: the groups it composed so far (a
    resumed run's, from its store; None: a fresh one).
    """
    unknown = [n for n in names if n not in CHAIN and n != COMPOSE]
    if unknown:
        raise ValueError(f"no stage called {unknown[0]!r} (stages: {', '.join(CHAIN)})")
    if seeds is None and "augment" in names:
        seeds = load_seed_instructions(cfg.run.seeds_path or None)
    if any(n in names for n in _NEED_QUERIES):
        queries = run_queries(cfg, queries)
    build: dict[str, Callable[[], object]] = {
        "augment": lambda: AugmentStage.from_config(cfg, seeds or ()),
        "verifiers": lambda: VerifierStage.from_config(cfg, queries),
        "crossval": lambda: CrossValStage.from_config(cfg, queries),
        "backtranslate": lambda: BackTranslateStage.from_config(cfg),
        "audit": lambda: AuditStage.from_config(cfg, queries),
        COMPOSE: lambda: ComposeStage.from_config(cfg, on_conflict, compose_groups),
        "queries": lambda: QueryJoinStage.from_config(cfg, queries, query_budget),
        "responses": lambda: ResponseStage.from_config(cfg, on_graded),
        "scoring": lambda: ScoreStage.from_config(cfg),
    }
    return [build[n]() for n in with_compose(cfg, names)]
