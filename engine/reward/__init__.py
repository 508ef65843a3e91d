"""The run's verified instructions as an RL reward: a scorer over the sandbox pool
(scorer.py), the request shapes of each trainer (dialects.py), the aiohttp service
(service.py, `autoif serve-reward`) and importable TRL / verl functions (adapters.py)."""
from engine.reward.scorer import (RequestError, RewardSettings, RewardTable, Score, Scorer)

__all__ = ["RequestError", "RewardSettings", "RewardTable", "Score", "Scorer"]
