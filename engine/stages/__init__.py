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


def default_stages(config=None) -> list:
    """The stage chain of a full run (SeedBatch in, QueryResult out); seeds from config.seeds_path."""
    seeds_path = getattr(config, "seeds_path", "") or None
    return [AugmentStage(load_seed_instructions(seeds_path)), VerifierStage(), CrossValStage(), BackTranslateStage(),
            QueryJoinStage(), ResponseStage(), ScoreStage()]
