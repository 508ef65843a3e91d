"""`autoif run --demo`: the settings of the small job `make run` runs."""
from __future__ import annotations

from engine.prompting import packaged_file

# `--demo`: a handful of seeds and queries, every stage for real, minutes on a laptop CPU, sized
# for the embedded 0.5B model on 2 cores. Its first seeds are constraints a small model can both
# write checkers for and follow; K is odd so that no case ties; augmentation continues the seed
# list (a small model obeys constraints shown in chat instead of writing new ones); and the
# reject of a query-level pair is the plain reply to the query (plain_rejects), because a small
# model's verdicts hardly vary between samples of one query. The run's queries are capped
# (max_queries) so that its time stays bounded however many instructions survive, and the demo's
# queries ask for short answers, since a long reply costs seconds per sample on 2 cores.
# Composition is on: most of the cap goes to prompts of 2 and 3 constraints (the seeds span
# three families, so a composed prompt has at most 3).
DEMO = dict(augment_batches=1, augment_seeds_shown=4, augment_per_prompt=2, augment_samples=2, augment_max_new=2,
            augment_style="list", verifier_k=5,
            verifier_case_samples=4, verifier_cases_per_side=3, queries_per_instruction=8, max_queries=40, response_temperature=1.0,
            responses_k=2, plain_rejects=True, max_inflight_requests=8, stage_concurrency=8, verifier_max_tokens=200,
            verifier_case_max_tokens=200, response_max_tokens=256, judge_max_tokens=128,
            augment_max_tokens=200, score_until=1, queries_path=str(packaged_file("demo_queries.jsonl")),
            compose=True, compose_mix="0.3,0.4,0.3", output_dir="runs/demo")
DEMO_SEEDS = 5
