"""The AutoIF pipeline stages, in pipeline order. Each implements engine.stage.Stage."""
from engine.stages.augment import AugmentStage, load_seed_instructions, make_seed_batches
from engine.stages.backtranslate import BackTranslateStage
from engine.stages.crossval import CrossValStage
from engine.stages.queries import QueryJoinStage, load_queries
from engine.stages.responses import ResponseStage
from engine.stages.scoring import ScoreStage
from engine.stages.verifiers import VerifierStage

__all__ = [
    "AugmentStage", "VerifierStage", "CrossValStage", "BackTranslateStage", "QueryJoinStage",
    "ResponseStage", "ScoreStage", "load_seed_instructions", "make_seed_batches", "load_queries",
    "default_stages",
]


def default_stages(config=None, seeds=None, queries=None) -> list:
    """The stage chain of a full run (SeedBatch in, QueryResult out).

    `seeds` / `queries`: the run's inputs (default: read from config.seeds_path / queries_path)."""
    if seeds is None:
        seeds = load_seed_instructions(getattr(config, "seeds_path", "") or None)
    return [AugmentStage(seeds), VerifierStage(), CrossValStage(), BackTranslateStage(),
            QueryJoinStage(queries), ResponseStage(), ScoreStage()]
