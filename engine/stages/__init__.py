"""The AutoIF pipeline stages, in pipeline order. Each implements engine.stage.Stage."""
from engine.stages.audit import AuditStage
from engine.stages.augment import AugmentStage, load_seed_instructions, make_seed_batches
from engine.stages.backtranslate import BackTranslateStage
from engine.stages.crossval import CrossValStage
from engine.stages.queries import QueryJoinStage, load_queries
from engine.stages.responses import SAMPLED, ResponseStage
from engine.stages.scoring import ScoreStage
from engine.stages.verifiers import VerifierStage

__all__ = [
    "AugmentStage", "VerifierStage", "CrossValStage", "BackTranslateStage", "AuditStage", "QueryJoinStage",
    "ResponseStage", "ScoreStage", "load_seed_instructions", "make_seed_batches", "load_queries",
    "default_stages", "SAMPLED",
]


def default_stages(config=None, seeds=None) -> list:
    """The stage chain of a full run (SeedBatch in, QueryResult out).

    `seeds`: the run's seed instructions (default: read from config.seeds_path)."""
    if seeds is None:
        seeds = load_seed_instructions(getattr(config, "seeds_path", "") or None)
    return [AugmentStage(seeds), VerifierStage(), CrossValStage(), BackTranslateStage(),
            AuditStage(), QueryJoinStage(), ResponseStage(record=SAMPLED), ScoreStage()]
