"""The AutoIF pipeline stages, in pipeline order. Each implements engine.stage.Stage.

Each stage takes its settings in its constructor; `build_stage` and `default_stages` here are
the one place that reads them from a Config.
"""
from __future__ import annotations

import functools
from typing import Callable, Sequence

from engine.config import Config
from engine.dedup import Deduper
from engine.records import Instruction, Query, SampledPrompt
from engine.stages.audit import AuditStage, probe_inputs
from engine.stages.augment import AugmentStage, load_seed_instructions, make_seed_batches
from engine.stages.backtranslate import BackTranslateStage
from engine.stages.base import Sampling
from engine.stages.crossval import CrossValStage
from engine.stages.nli import LLMJudge, NLIJudge, TransformersNLI
from engine.stages.queries import QueryBudget, QueryJoinStage, load_queries
from engine.stages.responses import SAMPLED, ResponseStage
from engine.stages.scoring import ScoreStage
from engine.stages.verifiers import VerifierStage

__all__ = [
    "AugmentStage", "VerifierStage", "CrossValStage", "BackTranslateStage", "AuditStage",
    "QueryJoinStage", "QueryBudget", "ResponseStage", "ScoreStage", "Sampling", "load_seed_instructions",
    "make_seed_batches", "load_queries", "CHAIN", "SAMPLED", "build_stage", "default_stages",
]

# the stage names of a full run, in order (SeedBatch in, QueryResult out)
CHAIN = ("augment", "verifiers", "crossval", "backtranslate", "audit", "queries", "responses",
         "scoring")


def nli_judge(cfg: Config) -> NLIJudge:
    """A local NLI model when config.nli_model_path names one, else the pipeline's LLM."""
    if cfg.backtranslate.nli_model_path:
        return TransformersNLI(cfg.backtranslate.nli_model_path, cfg.backtranslate.nli_device)
    return LLMJudge(Sampling(1, cfg.backtranslate.judge_temperature, cfg.backtranslate.judge_max_tokens))


def build_stage(name: str, cfg: Config, *, seeds: Sequence[Instruction] = (),
                queries: Sequence[Query] | None = None,
                on_sampled: Callable[[SampledPrompt], None] | None = None,
                query_budget: QueryBudget | None = None) -> object:
    """The stage called `name` with its settings from `cfg`.

    `seeds`: indexed by augment's deduper up front; `queries`: the query pool (None: read from
    config.queries_path, or the built-in set); `on_sampled`: given every graded prompt (the
    responses stage), kept or not, for the GRPO prompt set; `query_budget`: the grants of
    config.max_queries so far (a resumed run's, from its store; None: a fresh one).
    """
    judge = Sampling(1, cfg.backtranslate.judge_temperature, cfg.backtranslate.judge_max_tokens)
    if name in ("queries", "audit", "verifiers", "crossval") and queries is None:
        queries = load_queries(cfg.run.queries_path or None)
    if name == "augment":
        return AugmentStage(seeds, deduper=Deduper(threshold=cfg.augment.dedup_threshold, ngram=cfg.augment.dedup_ngram),
                            per_prompt=cfg.augment.per_prompt, style=cfg.augment.style,
                            sampling=Sampling(cfg.augment.samples, cfg.augment.temperature,
                                              cfg.augment.max_tokens),
                            checkable=judge if cfg.augment.checkable_filter else None,
                            max_new=cfg.augment.max_new)
    if name == "verifiers":
        return VerifierStage(sampling=Sampling(cfg.verifiers.k, cfg.verifiers.temperature,
                                               cfg.verifiers.max_tokens),
                             style=cfg.verifiers.style,
                             cases=Sampling(cfg.verifiers.case_samples, cfg.verifiers.temperature,
                                            cfg.verifiers.case_max_tokens),
                             cases_per_side=cfg.verifiers.cases_per_side,
                             case_style=cfg.verifiers.case_style,
                             case_queries=queries or ())
    if name == "crossval":
        return CrossValStage(case_agreement=cfg.crossval.case_agreement, function_accuracy=cfg.crossval.function_accuracy,
                             min_functions=cfg.crossval.min_functions, min_cases=cfg.crossval.min_cases,
                             two_sided=cfg.crossval.two_sided,
                             # the audit's probes, run in the same fork as the cases
                             probes=functools.partial(probe_inputs, queries=queries) if cfg.audit.enabled else None)
    if name == "backtranslate":
        if not cfg.backtranslate.enabled:           # no judge is loaded for a stage that passes through
            return BackTranslateStage(nli=LLMJudge(judge), sampling=judge, enabled=False)
        return BackTranslateStage(nli=nli_judge(cfg), sampling=judge)
    if name == "audit":
        return AuditStage(queries, enabled=cfg.audit.enabled, action=cfg.audit.action,
                          max_accepted=cfg.audit.max_accepted, weight=cfg.audit.weight)
    if name == "queries":
        return QueryJoinStage(queries, per_instruction=cfg.responses.queries_per_instruction, seed=cfg.run.seed,
                              budget=query_budget or QueryBudget(cfg.responses.max_queries))
    if name == "responses":
        return ResponseStage(sampling=Sampling(cfg.responses.k, cfg.responses.temperature,
                                               cfg.responses.max_tokens),
                             pass_threshold=cfg.responses.pass_threshold, on_sampled=on_sampled,
                             # the verifier stage's plain case reply, so both share one answer
                             plain=(Sampling(1, cfg.verifiers.temperature, cfg.verifiers.case_max_tokens)
                                    if cfg.responses.plain_rejects else None))
    if name == "scoring":
        return ScoreStage(sampling=judge, score_min=cfg.scoring.min, enabled=cfg.scoring.enabled, until=cfg.scoring.until)
    raise ValueError(f"no stage called {name!r} (stages: {', '.join(CHAIN)})")


def default_stages(cfg: Config, seeds: Sequence[Instruction] | None = None,
                   queries: Sequence[Query] | None = None, names: Sequence[str] = CHAIN,
                   on_sampled: Callable[[SampledPrompt], None] | None = None,
                   query_budget: QueryBudget | None = None) -> list:
    """The stages `names` (default: the whole chain) with their settings from `cfg`.

    `seeds`: the run's seed instructions (None: read from config.seeds_path); `queries`: the
    query pool (None: read from config.queries_path). A file is read only when a stage needs it.
    """
    if seeds is None and "augment" in names:
        seeds = load_seed_instructions(cfg.run.seeds_path or None)
    if queries is None and any(n in names for n in ("queries", "audit", "verifiers", "crossval")):
        queries = load_queries(cfg.run.queries_path or None)
    return [build_stage(n, cfg, seeds=seeds or (), queries=queries, on_sampled=on_sampled,
                        query_budget=query_budget) for n in names]
