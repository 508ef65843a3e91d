"""The AutoIF pipeline stages, in pipeline order. Each implements engine.stage.Stage.

Each stage takes its settings in its constructor; `build_stage` and `default_stages` here are
the one place that reads them from a Config.
"""
from __future__ import annotations

import functools
from typing import Callable, Sequence

from engine.config import Config
from engine.dedup import Deduper
from engine.records import Instruction, Query, QueryResult, SampledPrompt
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
    if cfg.nli_model_path:
        return TransformersNLI(cfg.nli_model_path, cfg.nli_device)
    return LLMJudge(Sampling(1, cfg.judge_temperature, cfg.judge_max_tokens))


def build_stage(name: str, cfg: Config, *, seeds: Sequence[Instruction] = (),
                queries: Sequence[Query] | None = None,
                on_sampled: Callable[[SampledPrompt], None] | None = None,
                query_budget: QueryBudget | None = None,
                on_graded: Callable[[QueryResult], None] | None = None) -> object:
    """The stage called `name` with its settings from `cfg`.

    `seeds`: indexed by augment's deduper up front; `queries`: the query pool (None: read from
    config.queries_path, or the built-in set); `on_sampled`: given every graded prompt (the
    responses stage), kept or not, for the GRPO prompt set; `query_budget`: the grants of
    config.max_queries so far (a resumed run's, from its store; None: a fresh one);
    `on_graded`: given the whole result of every graded prompt (the responses stage), kept or not.
    """
    judge = Sampling(1, cfg.judge_temperature, cfg.judge_max_tokens)
    if name in ("queries", "audit", "verifiers", "crossval") and queries is None:
        queries = load_queries(cfg.queries_path or None)
    if name == "augment":
        return AugmentStage(seeds, deduper=Deduper(threshold=cfg.dedup_threshold, ngram=cfg.dedup_ngram),
                            per_prompt=cfg.augment_per_prompt, style=cfg.augment_style,
                            sampling=Sampling(cfg.augment_samples, cfg.augment_temperature,
                                              cfg.augment_max_tokens),
                            checkable=judge if cfg.checkable_filter else None,
                            max_new=cfg.augment_max_new)
    if name == "verifiers":
        return VerifierStage(sampling=Sampling(cfg.verifier_k, cfg.verifier_temperature,
                                               cfg.verifier_max_tokens),
                             style=cfg.verifier_style,
                             cases=Sampling(cfg.verifier_case_samples, cfg.verifier_temperature,
                                            cfg.verifier_case_max_tokens),
                             cases_per_side=cfg.verifier_cases_per_side,
                             case_style=cfg.verifier_case_style,
                             case_queries=queries or ())
    if name == "crossval":
        return CrossValStage(case_agreement=cfg.case_agreement, function_accuracy=cfg.function_accuracy,
                             min_functions=cfg.min_functions, min_cases=cfg.min_cases,
                             two_sided=cfg.two_sided_cases,
                             # the audit's probes, run in the same fork as the cases
                             probes=functools.partial(probe_inputs, queries=queries) if cfg.audit else None)
    if name == "backtranslate":
        if not cfg.backtranslate:           # no judge is loaded for a stage that passes through
            return BackTranslateStage(nli=LLMJudge(judge), sampling=judge, enabled=False)
        return BackTranslateStage(nli=nli_judge(cfg), sampling=judge)
    if name == "audit":
        return AuditStage(queries, enabled=cfg.audit, action=cfg.audit_action,
                          max_accepted=cfg.audit_max_accepted, weight=cfg.audit_weight)
    if name == "queries":
        return QueryJoinStage(queries, per_instruction=cfg.queries_per_instruction, seed=cfg.seed,
                              budget=query_budget or QueryBudget(cfg.max_queries))
    if name == "responses":
        return ResponseStage(sampling=Sampling(cfg.responses_k, cfg.response_temperature,
                                               cfg.response_max_tokens),
                             pass_threshold=cfg.pass_threshold, on_sampled=on_sampled,
                             on_graded=on_graded,
                             # the verifier stage's plain case reply, so both share one answer
                             plain=(Sampling(1, cfg.verifier_temperature, cfg.verifier_case_max_tokens)
                                    if cfg.plain_rejects else None))
    if name == "scoring":
        return ScoreStage(sampling=judge, score_min=cfg.score_min, enabled=cfg.scoring, until=cfg.score_until)
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
        seeds = load_seed_instructions(cfg.seeds_path or None)
    if queries is None and any(n in names for n in ("queries", "audit", "verifiers", "crossval")):
        queries = load_queries(cfg.queries_path or None)
    return [build_stage(n, cfg, seeds=seeds or (), queries=queries, on_sampled=on_sampled,
                        query_budget=query_budget) for n in names]
