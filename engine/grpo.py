"""The GRPO prompt set: every (instruction, query) prompt the run sampled, with its K-sample
pass-rate estimate, and the difficulty-targeted subset a group-relative trainer learns from.

GRPO learns only from prompts whose sampled completions get different rewards: a prompt every
sample passes (or every sample fails) has zero advantage for the whole group. The estimate
here is the share of the run's K responses whose pass rate over the instruction's functions is
MORE than `pass_threshold` (the binary reward `autoif serve-reward` gives). A prompt is mixed
when that share lies strictly inside (grpo_band_low, grpo_band_high).

Rows are chat-format prompts plus the columns trainers read: `instruction_id` (TRL passes
dataset columns to reward functions; OpenRLHF's label key), and verl's `data_source` and
`reward_model.ground_truth`. Each file is written as JSONL and, with the `parquet` setting, as
Parquet with the same rows under one fixed schema (GRPO_SCHEMA): verl's RLHFDataset loads only
`.parquet` and `.json` files (volcengine/verl b178a3cd56f58b2d502255daba591e92833930a7,
verl/utils/dataset/rl_dataset.py, `_read_files_and_tokenize`). It reads the chat messages from
`prompt` (data.prompt_key), the reward function's key from `data_source`, the ground truth
from `reward_model["ground_truth"]`, and fills `extra_info` with {} where a row has none.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from engine.export import ParquetUnavailable, write_jsonl, write_parquet
from engine.records import SampledPrompt
from engine.stage import Funnel

DATA_SOURCE = "autoif"
FUNNEL_ROW = "grpo.prompt"


@dataclass(frozen=True)
class GrpoOptions:
    pass_threshold: float = 0.5
    band_low: float = 0.0
    band_high: float = 1.0
    config_hash: str = ""
    model: str = ""          # the model the server names, for prompts sampled as "default"
    parquet: bool = True     # a Parquet copy beside each JSONL file
    # config.compose: every row names its constraints (n_constraints, instruction_ids, a list as
    # ground truth) and how their verdicts combine into the reward ("fraction" or "all")
    composed: bool = False
    reward: str = "fraction"

    @classmethod
    def from_config(cls, cfg: Any) -> GrpoOptions:
        return cls(pass_threshold=cfg.responses.pass_threshold, band_low=cfg.export.grpo_band_low,
                   band_high=cfg.export.grpo_band_high, config_hash=cfg.config_hash(),
                   parquet=cfg.export.parquet, composed=cfg.compose.enabled, reward=cfg.compose.reward)


def grpo_schema(composed: bool = False):
    """The Arrow schema of a prompt row (prompt_row), in its key order."""
    try:
        import pyarrow as pa
    except ImportError as exc:
        raise ParquetUnavailable.because(exc) from None
    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    truth = pa.list_(pa.string()) if composed else pa.string()
    reward_model = [("style", pa.string()), ("ground_truth", truth)]
    if composed:
        reward_model.append(("combine", pa.string()))
    return pa.schema([
        ("prompt", pa.list_(message)), ("instruction_id", pa.string()), ("pass_rate", pa.float64()),
        ("k", pa.int64()), ("mean_function_pass_rate", pa.float64()), ("data_source", pa.string()),
        ("reward_model", pa.struct(reward_model)),
        ("provenance", pa.struct([("instruction_id", pa.string()), ("query_id", pa.string()),
                                  ("function_ids", pa.list_(pa.string())), ("model", pa.string()),
                                  ("config_hash", pa.string())])),
        *((("n_constraints", pa.int64()), ("instruction_ids", pa.list_(pa.string()))) if composed else ())])


@dataclass
class GrpoSummary:
    prompts: int = 0
    mixed: int = 0
    below_band: int = 0
    above_band: int = 0
    band: tuple[float, float] = (0.0, 1.0)
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def mixed_share(self) -> float:
        return self.mixed / self.prompts if self.prompts else 0.0

    def to_dict(self) -> dict:
        return {"prompts": self.prompts, "mixed": self.mixed, "mixed_share": self.mixed_share,
                "below_band": self.below_band, "above_band": self.above_band,
                "band": list(self.band), "files": {k: str(v) for k, v in self.files.items()}}

    def count(self, funnel: Funnel) -> None:
        """The funnel row: in = prompts, kept = mixed, dropped = outside the band."""
        funnel.count_in(FUNNEL_ROW, self.prompts)
        funnel.count_kept(FUNNEL_ROW, self.mixed)
        funnel.count_out(FUNNEL_ROW, self.mixed)
        for reason, n in (("below_band", self.below_band), ("above_band", self.above_band)):
            if n:
                funnel.drop(FUNNEL_ROW, reason, n)


def prompt_row(sampled: SampledPrompt, opts: GrpoOptions) -> dict:
    task, inst = sampled.task, sampled.task.instruction
    k = len(sampled.pass_rates)
    # a composed prompt's rates are shares of constraints met: a sample passes when it meets all
    passes = sum((rate >= 1.0) if task.also else (rate > opts.pass_threshold) for rate in sampled.pass_rates)
    mean_rate = sum(sampled.pass_rates) / k if k else 0.0
    iid = inst.instruction.id
    ids = task.instruction_ids
    row = {"prompt": [{"role": "user", "content": task.prompt}], "instruction_id": iid,
           "pass_rate": passes / k if k else 0.0, "k": k, "mean_function_pass_rate": mean_rate,
           "data_source": DATA_SOURCE,
           "reward_model": ({"style": "rule", "ground_truth": ids, "combine": opts.reward} if opts.composed
                            else {"style": "rule", "ground_truth": iid}),
           "provenance": {"instruction_id": iid, "query_id": task.query_id,
                          "function_ids": [f.id for c in task.constraints for f, _ in c.functions],
                          "model": sampled.model if sampled.model not in ("", "default") else opts.model or sampled.model,
                          "config_hash": opts.config_hash}}
    if opts.composed:
        row.update(n_constraints=len(ids), instruction_ids=ids)
    return row


def export_grpo(out_dir: str | Path, sampled: Iterable[SampledPrompt], opts: GrpoOptions) -> GrpoSummary:
    """Write grpo_prompts.jsonl (every sampled prompt) and grpo_prompts_mixed.jsonl (the band),
    each with its .parquet copy when `opts.parquet`."""
    rows: dict[str, dict] = {}
    for s in sampled:                             # one row per (instruction, query), first wins
        if s.pass_rates and s.task.id not in rows:
            rows[s.task.id] = prompt_row(s, opts)
    every = sorted(rows.values(), key=lambda r: (r["instruction_id"], r["provenance"]["query_id"]))
    summary = GrpoSummary(prompts=len(every), band=(opts.band_low, opts.band_high))
    mixed = []
    for row in every:
        rate = row["pass_rate"]
        if rate <= opts.band_low:
            summary.below_band += 1
        elif rate >= opts.band_high:
            summary.above_band += 1
        else:
            mixed.append(row)
    summary.mixed = len(mixed)
    out_dir = Path(out_dir)
    schema = grpo_schema(opts.composed) if opts.parquet else None
    for stem, data in (("grpo_prompts", every), ("grpo_prompts_mixed", mixed)):
        summary.files[stem] = out_dir / f"{stem}.jsonl"
        write_jsonl(summary.files[stem], data)
        if opts.parquet:
            summary.files[f"{stem}.parquet"] = out_dir / f"{stem}.parquet"
            write_parquet(summary.files[f"{stem}.parquet"], data, summary.files[stem], schema)
    return summary
