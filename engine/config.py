"""Every knob of a run: one frozen dataclass per section, composed into `Config`; TOML file <
CLI flags, a stable hash, a pretty dump.

Code reads settings by section (`cfg.verifiers.k`, `cfg.pool.workers`). Each setting also has a
flat name, unique over all sections, which the file, the flags and the hash use: the TOML file
may list settings flat (`verifier_k = 8`) or under their section table (`[verifiers]` then
`verifier_k = 8`; `[pool]` then `workers = 3`, the flat name less its section prefix). The
`[roles]` table may also be keyed by role (`judge = "URL"`, or `[roles.judge]` with `servers` and
`model`; docs/roles.md). Settings marked volatile (where and how fast to run) are left out of
`config_hash()`: changing them does not change the data. Settings with `hashed_at_default`
False are left out of it while at their default, which reproduces the behaviour of a config
that does not have them: the run directories of such configs keep their hash and stay resumable.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping

import orjson

from engine.errors import ConfigError
from engine.roles import ROLES, parse_assignments
from engine.urls import url_problem

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


def _f(default: Any, flat: str, help: str, *, volatile: bool = False,
       lo: float | None = None, hi: float | None = None, choices: tuple = (),
       flags: tuple[str, ...] = (), secret: bool = False, metavar: str = "",
       check: Callable[[Any], None] | None = None, hashed_at_default: bool = True) -> Any:
    """A setting; `flat`: its name in files, flags and the hash; `flags`: its command-line
    spellings when not just --flat-name (the first is the main one); `secret`: never printed nor
    written to summaries; `check(value)`: raises ValueError saying what is wrong with a value;
    `hashed_at_default` False: left out of config_hash() while at its default, so run
    directories made before the setting existed keep their hash."""
    meta = {"flat": flat, "help": help, "volatile": volatile, "lo": lo, "hi": hi,
            "choices": choices, "flags": flags, "secret": secret, "metavar": metavar,
            "check": check, "hashed_at_default": hashed_at_default}
    if isinstance(default, list):
        return field(default_factory=lambda d=tuple(default): list(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class RunSettings:
    """Where the run reads its inputs, writes its state, and how it talks to the LLM."""

    model: str = _f("default", "model", "model name sent to the server and written into provenance "
                    "(default: the name the server reports)", flags=("--model", "--model-path"))
    servers: list[str] = _f([], "servers", "LLM server base URL; repeat for several (none: `autoif run` starts one)",
                            volatile=True, flags=("--server",))
    api_key: str = _f("", "api_key", "API key sent as a bearer token (default: $OPENAI_API_KEY)",
                      volatile=True, secret=True)
    api: str = _f("auto", "api", "server protocol (auto: detect)", volatile=True,
                  choices=("auto", "sglang", "openai"))
    output_dir: str = _f("runs/autoif", "output_dir", "run directory (state database, exports)", volatile=True)
    seed: int = _f(0, "seed", "seed for sampling seeds, queries and LLM requests")
    seeds_path: str = _f("", "seeds_path", "seed instructions JSONL (empty: the built-in set)")
    queries_path: str = _f("", "queries_path", "queries JSONL or ShareGPT JSONL (empty: the built-in set)")
    request_timeout_s: float = _f(600.0, "request_timeout_s", "timeout of one LLM request", volatile=True, lo=0.001)
    max_retries: int = _f(3, "max_retries", "retries of a failed LLM request", volatile=True, lo=0)
    max_inflight_requests: int = _f(256, "max_inflight_requests", "LLM requests in flight at once", volatile=True, lo=1)
    stage_concurrency: int = _f(64, "stage_concurrency", "items each stage processes at once", volatile=True, lo=1)
    sim_speed: float = _f(1.0, "sim_speed", "--backend sim: how many times faster than its timing of an "
                          "8B model on one H100 the simulator answers (0: at once)", volatile=True, lo=0)
    max_bad_input_share: float = _f(0.1, "max_bad_input_share", "bad lines skipped (with a warning) in a seeds or queries file, as a share of its lines; more refuses the run", volatile=True, lo=0, hi=1)


def _role_servers(entries: list[str]) -> dict[str, list[str]]:
    return parse_assignments(entries, url_problem)


def _role_models(entries: list[str]) -> dict[str, str]:
    models = parse_assignments(entries, lambda name: None)
    for role, names in models.items():
        if len(names) > 1:
            raise ValueError(f"role {role!r} is given {len(names)} models ({', '.join(names)}); one per role")
    return {role: names[0] for role, names in models.items()}


_ROLES_HELP = ("roles: writer (new instructions), coder (verification functions, JSON test cases), "
               "responder (responses, plain replies, reply test cases), judge (checkable filter, "
               "back-translation, NLI, scoring)")


@dataclass(frozen=True)
class RoleSettings:
    """A server and model per role (engine.roles); a role not named here uses the run's."""

    servers: list[str] = _f([], "role_servers", "a server of ROLE (repeat for several servers or "
                            "roles; a role without one uses --server or the started server); " + _ROLES_HELP,
                            volatile=True, flags=("--role-server",), metavar="ROLE=URL",
                            check=_role_servers)
    # A role's model shapes its answers, so it is hashed; left out while none is given, so run
    # directories keep their hash.
    models: list[str] = _f([], "role_models", "the model name ROLE's requests send and its provenance "
                           "names (default: the role's server's own name, or --model where the "
                           "role uses the run's servers)", flags=("--role-model",), metavar="ROLE=NAME",
                           check=_role_models, hashed_at_default=False)

    def __post_init__(self) -> None:
        for flag, entries, check in (("--role-server", self.servers, _role_servers),
                                     ("--role-model", self.models, _role_models)):
            try:
                check(entries)
            except ValueError as exc:
                raise ConfigError(f"{flag}: {exc}") from None

    def servers_for(self, role: str) -> list[str]:
        """The role's own servers ([]: the run's)."""
        return _role_servers(self.servers).get(role, [])

    def model_for(self, role: str) -> str | None:
        """The role's own model name (None: the run's, or its server's)."""
        return _role_models(self.models).get(role)


@dataclass(frozen=True)
class AugmentSettings:
    """Self-instruct augmentation of the seed instructions, and its dedup."""

    batches: int = _f(8, "augment_batches", "self-instruct prompts (each shows a sample of seeds)", lo=0)
    seeds_shown: int = _f(8, "augment_seeds_shown", "seed instructions shown in each prompt", lo=1)
    per_prompt: int = _f(10, "augment_per_prompt", "new instructions asked for in each prompt", lo=1)
    samples: int = _f(1, "augment_samples", "answers sampled per augment prompt", lo=1)
    max_new: int = _f(0, "augment_max_new", "new instructions kept per augment prompt at most, over all its answers, "
                      "the first in answer order (0: no cap)", lo=0)
    style: str = _f("chat", "augment_style", "chat: ask for new constraints in a chat message; list: the seeds as "
                    "a numbered list the model continues as raw text (small models, which obey the "
                    "shown constraints when asked in chat, continue a list)", choices=("chat", "list"))
    temperature: float = _f(0.9, "augment_temperature", "sampling temperature of augmentation", lo=0)
    max_tokens: int = _f(1024, "augment_max_tokens", "max new tokens of an augment answer", lo=1)
    dedup_threshold: float = _f(0.7, "dedup_threshold", "n-gram Jaccard at or above which an instruction is a near-duplicate", lo=0.01, hi=1)
    dedup_ngram: int = _f(2, "dedup_ngram", "word n-gram size of dedup shingles", lo=1)
    checkable_filter: bool = _f(True, "checkable_filter", "ask the LLM whether each new instruction is code-checkable")


@dataclass(frozen=True)
class VerifierSettings:
    """Verification functions and test cases sampled per instruction."""

    k: int = _f(8, "verifier_k", "verification answers (function + cases) sampled per instruction", lo=1)
    temperature: float = _f(0.7, "verifier_temperature", "sampling temperature of verifier generation", lo=0)
    max_tokens: int = _f(1536, "verifier_max_tokens", "max new tokens of a verifier answer (json style) or function (code style)", lo=1)
    style: str = _f("code", "verifier_style", "code: each function is a few-shot code completion and test cases a "
                    "separate JSON request (small models follow it); json: one JSON answer holds both",
                    choices=("code", "json"))
    case_style: str = _f("replies", "verifier_case_style", "code style: replies: cases are replies written to obey the "
                         "constraint (expected True) and plain replies to the same queries (expected False); "
                         "lists: one JSON request for lists of passing and failing replies",
                         choices=("replies", "lists"))
    case_samples: int = _f(2, "verifier_case_samples", "code style: test-case answers (lists) or queries replied to (replies) per instruction", lo=1)
    cases_per_side: int = _f(3, "verifier_cases_per_side", "code style: passing and failing cases asked for in each answer", lo=1)
    case_max_tokens: int = _f(768, "verifier_case_max_tokens", "code style: max new tokens of a test-case answer", lo=1)
    case_temperature_spread: float = _f(0.0, "verifier_case_temperature_spread", "replies case style: the replies to "
                                        "the case queries sample at temperatures spread evenly over "
                                        "verifier_temperature plus or minus this (first query lowest), so that cases "
                                        "differ in more than the constraint", lo=0, hashed_at_default=False)
    minimal_pairs: bool = _f(False, "minimal_pairs", "for each case, ask the LLM to edit it as little as it can to the "
                             "other side of the constraint (a reply that obeys it: break it; one that does not: "
                             "obey it); both sides enter cross-validation, and a function wrong on a kept pair "
                             "is dropped", hashed_at_default=False)
    minimal_pair_max_change: float = _f(0.5, "minimal_pair_max_change", "a minimal pair is rejected when its edit "
                                        "changes MORE than this share of the text (1 - difflib's character "
                                        "ratio)", lo=0, hi=1, hashed_at_default=False)


@dataclass(frozen=True)
class CrossValSettings:
    """Cross-validation of functions against cases."""

    case_agreement: float = _f(0.5, "case_agreement", "a case is kept when MORE than this share of functions agree with it", lo=0, hi=1)
    function_accuracy: float = _f(0.5, "function_accuracy", "a function is kept when its accuracy on kept cases is MORE than this", lo=0, hi=1)
    min_functions: int = _f(1, "min_functions", "an instruction needs at least this many kept functions", lo=1)
    min_cases: int = _f(1, "min_cases", "an instruction needs at least this many kept cases", lo=1)
    two_sided: bool = _f(True, "two_sided_cases", "an instruction needs kept cases expecting True AND cases expecting False")


@dataclass(frozen=True)
class BackTranslateSettings:
    """Back-translation of functions, and the judge calls' sampling."""

    enabled: bool = _f(True, "backtranslate", "back-translate functions and drop contradicted ones")
    nli_model_path: str = _f("", "nli_model_path", "local NLI model directory (transformers); empty: the LLM judges")
    nli_device: str = _f("cpu", "nli_device", "device of the local NLI model", volatile=True)
    judge_temperature: float = _f(0.0, "judge_temperature", "temperature of judge calls (checkable, back-translation, NLI, score) and of minimal-pair edits", lo=0)
    judge_max_tokens: int = _f(512, "judge_max_tokens", "max new tokens of a judge answer", lo=1)
    rule: str = _f("contradiction", "backtranslate_rule", "which functions back-translation drops: contradiction: "
                   "those whose back-translation contradicts the instruction; equivalence: those whose "
                   "back-translation and instruction do not entail each other both ways",
                   choices=("contradiction", "equivalence"), hashed_at_default=False)


@dataclass(frozen=True)
class AuditSettings:
    """Reward-hacking trip wires: every kept function also runs on degenerate probes."""

    enabled: bool = _f(True, "audit", "run every kept function on degenerate probes (empty, restated, repeated, 10k words, echo)")
    action: str = _f("flag", "audit_action", "what happens to a function that accepts probes", choices=("flag", "downweight", "drop"))
    max_accepted: int = _f(0, "audit_max_accepted", "a function is flagged when it accepts MORE than this many probes", lo=0)
    weight: float = _f(0.5, "audit_weight", "reward weight of a flagged function when audit_action is downweight", lo=0, hi=1)


@dataclass(frozen=True)
class ResponseSettings:
    """Queries joined to each instruction and the responses sampled for them."""

    queries_per_instruction: int = _f(16, "queries_per_instruction", "queries joined to each instruction", lo=1)
    max_queries: int = _f(0, "max_queries", "cap on the queries joined in all: once every instruction is verified, they "
                          "are granted in instruction-id order, whatever the timing; the rest get none (0: no cap, "
                          "and responses start as each instruction is verified; per shard under Ray, per round in "
                          "online DPO)", lo=0)
    k: int = _f(8, "responses_k", "responses sampled per (instruction, query)", lo=1)
    temperature: float = _f(0.7, "response_temperature", "sampling temperature of responses", lo=0)
    max_tokens: int = _f(1024, "response_max_tokens", "max new tokens of a response", lo=1)
    plain_rejects: bool = _f(False, "plain_rejects", "also verify a plain reply to each query (the query alone, without the "
                             "instruction): when it fails, it is the query-level DPO reject of a query none of whose "
                             "K samples failed (never an SFT answer)")
    pass_threshold: float = _f(0.5, "pass_threshold", "a response is kept when MORE than this share of functions pass it", lo=0, hi=1)


@dataclass(frozen=True)
class ScoringSettings:
    """LLM rating of kept responses."""

    enabled: bool = _f(True, "scoring", "have the LLM rate kept responses")
    min: int = _f(8, "score_min", "keep responses scored at least this (1-10)", lo=1, hi=10)
    until: int = _f(0, "score_until", "judge passed responses best first until this many per query are kept; "
                    "0: judge every one", lo=0)


@dataclass(frozen=True)
class PoolSettings:
    """Limits of the sandbox pool that runs verification functions."""

    workers: int = _f(0, "pool_workers", "sandbox worker processes (0: one per CPU core)", volatile=True, lo=0)
    timeout_s: float = _f(2.0, "pool_timeout_s", "time limit of one sandbox job: one function over all its inputs", lo=0.001)
    memory_mb: int = _f(512, "pool_memory_mb", "memory limit of a sandbox worker", lo=16)
    # A looping verifier costs its job's CPU budget, not the wall-clock timeout. An honest check
    # takes tens of microseconds, milliseconds on a 10,000-word text, so 10 ms + 2 ms per input
    # leaves it a wide margin while a looping verifier is cut quickly (bench.workload holds the
    # checks this is sized against).
    cpu_base_s: float = _f(0.01, "pool_cpu_base_s", "CPU-time budget of one sandbox job: this much, plus pool_cpu_per_input_s per input", lo=0.001)
    cpu_per_input_s: float = _f(0.002, "pool_cpu_per_input_s", "CPU-time budget per input of a sandbox job (checks it cuts are timeouts)", lo=0)
    coalesce_window_s: float = _f(0.05, "pool_coalesce_window_s", "how long a response check waits, while other queries of its instruction are generating, for their checks of the same functions to share its fork", lo=0)


@dataclass(frozen=True)
class ExportSettings:
    """What the run writes: SFT formats, DPO pairs, the GRPO band."""

    formats: list[str] = _f(["alpaca", "sharegpt", "trl"], "export_formats", "SFT formats to write",
                            choices=("alpaca", "sharegpt", "trl"))
    dpo: bool = _f(True, "export_dpo", "write DPO pairs (instruction and query level)")
    sft_per_query: int = _f(1, "sft_per_query", "SFT examples kept per (instruction, query), best first", lo=1)
    dpo_pairs_per_instruction: int = _f(2, "dpo_pairs_per_instruction", "instruction-level DPO pairs per instruction", lo=0)
    parquet: bool = _f(True, "parquet", "also write Parquet (pyarrow)", volatile=True)
    grpo_band_low: float = _f(0.0, "grpo_band_low", "GRPO difficulty band: a prompt is mixed when its K-sample pass rate is MORE than this", lo=0, hi=1)
    grpo_band_high: float = _f(1.0, "grpo_band_high", "... and LESS than this", lo=0, hi=1)
    precision: bool = _f(False, "precision_export", "SFT answers and DPO chosen replies only from responses that "
                         "EVERY kept function the audit did not flag passes (not just more than pass_threshold "
                         "of them)", hashed_at_default=False)

    def __post_init__(self) -> None:
        # an empty band has no mixed prompts: the GRPO export would be empty without a word
        if not self.grpo_band_low < self.grpo_band_high:
            raise ConfigError(f"--grpo-band-low ({self.grpo_band_low:g}) must be less than "
                              f"--grpo-band-high ({self.grpo_band_high:g})")


@dataclass(frozen=True)
class ComposeSettings:
    """Multi-constraint prompts composed from verified instructions of different families."""

    enabled: bool = _f(False, "compose", "also compose prompts of 2 to compose_max verified constraints, each of "
                       "another family, with no conflicting pair", hashed_at_default=False)
    max: int = _f(4, "compose_max", "most constraints in one composed prompt", lo=2, hashed_at_default=False)
    mix: str = _f("0.4,0.3,0.2,0.1", "compose_mix", "shares of prompts with 1, 2, 3, 4 or more constraints, "
                  "comma-separated (the last share is spread over its count..compose_max)", hashed_at_default=False)
    reward: str = _f("fraction", "compose_reward", "GRPO reward of a composed prompt: the fraction of constraints "
                     "met, or 1 only when all are", choices=("fraction", "all"), hashed_at_default=False)
    family_llm: bool = _f(True, "family_llm", "ask the LLM for the family of an instruction the rules do not "
                          "place", hashed_at_default=False)

    def __post_init__(self) -> None:
        try:
            shares = self.shares
        except ValueError:
            shares = ()
        if len(shares) < 2 or not shares[0] > 0 or min(shares) < 0:
            raise ConfigError(f"--compose-mix {self.mix!r}: at least two comma-separated shares (1 constraint, "
                              "2, ...), none below 0, the first above 0")

    @property
    def shares(self) -> tuple[float, ...]:
        return tuple(float(x) for x in self.mix.split(","))


@dataclass(frozen=True)
class Config:
    """Every setting of a run, one frozen section per pipeline part (`cfg.verifiers.k`).

    Each setting also has a flat name (`verifier_k`), unique over all sections: the TOML keys,
    the command-line flags, `config_hash()` and summaries use it (`from_flat`, `flat`).
    """

    run: RunSettings = field(default_factory=RunSettings)
    roles: RoleSettings = field(default_factory=RoleSettings)
    augment: AugmentSettings = field(default_factory=AugmentSettings)
    verifiers: VerifierSettings = field(default_factory=VerifierSettings)
    crossval: CrossValSettings = field(default_factory=CrossValSettings)
    backtranslate: BackTranslateSettings = field(default_factory=BackTranslateSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    responses: ResponseSettings = field(default_factory=ResponseSettings)
    scoring: ScoringSettings = field(default_factory=ScoringSettings)
    pool: PoolSettings = field(default_factory=PoolSettings)
    export: ExportSettings = field(default_factory=ExportSettings)
    compose: ComposeSettings = field(default_factory=ComposeSettings)

    # ------------------------------------------------------------ the flat-name view

    @classmethod
    def from_flat(cls, values: Mapping[str, Any] | None = None, /, **more: Any) -> Config:
        """A Config from flat names (`verifier_k=4`); the names not given keep their defaults."""
        given = {**(values or {}), **more}
        unknown = [k for k in given if k not in FIELDS]
        if unknown:
            raise TypeError(f"Config has no setting {unknown[0]!r}")
        sections: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
        for name, value in given.items():
            section, attr = WHERE[name]
            sections[section][attr] = list(value) if isinstance(value, list) else value
        return cls(**{s: SECTIONS[s](**attrs) for s, attrs in sections.items()})

    def flat(self) -> dict[str, Any]:
        """flat name -> value, in section order."""
        return {name: getattr(getattr(self, section), attr) for name, (section, attr) in WHERE.items()}

    def replace_flat(self, **changes: Any) -> Config:
        """A copy with the settings named by flat name changed."""
        return Config.from_flat(self.flat(), **changes)

    # ------------------------------------------------------------ views

    def request_model(self, role: str) -> str:
        """The model name the role's requests send: its own; else, on its own servers, "default"
        (whatever they serve: the run's --model names another server's model); else the run's."""
        return self.roles.model_for(role) or ("default" if self.roles.servers_for(role) else self.run.model)

    def public_dict(self) -> dict[str, Any]:
        """flat() with secrets masked: what summaries, reports and dumps show."""
        return {k: ("***" if v and FIELDS[k].metadata["secret"] else v) for k, v in self.flat().items()}

    def config_hash(self) -> str:
        """Hash of the settings that shape the data (volatile ones excluded), keyed by flat name
        (run directories store it); 12 hex digits."""
        stable = {k: v for k, v in self.flat().items() if not FIELDS[k].metadata["volatile"]
                  and (FIELDS[k].metadata["hashed_at_default"] or v != _DEFAULTS[k])}
        return hashlib.sha256(orjson.dumps(stable, option=orjson.OPT_SORT_KEYS)).hexdigest()[:12]

    def dump(self) -> str:
        """TOML that load_config reads back, grouped by section, with each knob's help."""
        lines = [f"# config hash {self.config_hash()}"]
        section = ""
        for name, value in self.flat().items():
            meta = FIELDS[name].metadata
            if WHERE[name][0] != section:
                section = WHERE[name][0]
                lines.append(f"\n[{section}]")
            if meta["secret"]:
                lines.append(f"# {name}: {meta['help']} (not shown)")
                continue
            lines.append(f"{name} = {_toml_value(value)}  # {meta['help']}")
        return "\n".join(lines) + "\n"


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]


# section name -> its dataclass; flat name -> (section, attribute) and its dataclass Field
SECTIONS: dict[str, type] = {f.name: f.default_factory for f in fields(Config)}  # type: ignore[misc]
WHERE: dict[str, tuple[str, str]] = {f.metadata["flat"]: (s, f.name) for s, kind in SECTIONS.items()
                                     for f in fields(kind)}
FIELDS: dict[str, dataclasses.Field] = {f.metadata["flat"]: f for kind in SECTIONS.values()
                                        for f in fields(kind)}
_TYPES = {name: type(f.default) if f.default is not dataclasses.MISSING else list for name, f in FIELDS.items()}
_DEFAULTS = Config().flat()


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return orjson.dumps(str(v)).decode()


def _check(name: str, value: Any) -> Any:
    """The value converted to the field's type, or ValueError saying what is wrong."""
    kind = _TYPES[name]
    meta = FIELDS[name].metadata
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true/false, got {value!r}")
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"expected a number, got {value!r}")
        value = float(value)
    elif kind is list:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list) and all(isinstance(x, str) for x in value):
            value = [y.strip() for x in value for y in x.split(",") if y.strip()]   # A,B or repeated
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise ValueError(f"expected a list of strings, got {value!r}")
        value = list(value)
    elif not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    if meta["lo"] is not None and value < meta["lo"]:
        raise ValueError(f"must be >= {meta['lo']}, got {value!r}")
    if meta["hi"] is not None and value > meta["hi"]:
        raise ValueError(f"must be <= {meta['hi']}, got {value!r}")
    if meta["choices"]:
        bad = [x for x in (value if isinstance(value, list) else [value]) if x not in meta["choices"]]
        if bad:
            raise ValueError(f"{bad[0]!r} is not one of {', '.join(meta['choices'])}")
    if meta["check"] is not None:
        meta["check"](value)
    return value


def _flatten(data: Mapping[str, Any], where: str) -> dict[str, tuple[str, Any]]:
    """flat name -> (key as written, value); tables are sections of flat names."""
    flat: dict[str, tuple[str, Any]] = {}
    for key, value in data.items():
        if key == "roles" and isinstance(value, dict):
            value = _role_table(value, where, flat)
        if isinstance(value, dict):
            for sub, v in value.items():
                name = sub if sub in FIELDS else f"{key}_{sub}"
                if name not in FIELDS or WHERE[name][0] != key:
                    raise ConfigError(f"{where}: unknown key '{key}.{sub}'")
                flat[name] = (f"{key}.{sub}", v)
        elif key in FIELDS:
            flat[key] = (key, value)
        else:
            raise ConfigError(f"{where}: unknown key '{key}'")
    return flat


def _role_table(table: Mapping[str, Any], where: str, flat: dict[str, tuple[str, Any]]) -> dict:
    """The `[roles]` table: `judge = "URL"` (or a list of URLs), or `[roles.judge]` with
    `servers` (a URL or a list) and `model`, become role_servers / role_models entries in `flat`;
    returns the rest of the table (settings by flat name)."""
    servers: list[str] = []
    models: list[str] = []
    for role, spec in table.items():
        if role not in ROLES:
            continue
        if not isinstance(spec, dict):
            spec = {"servers": spec}
        for sub, v in spec.items():
            if sub not in ("servers", "model"):
                raise ConfigError(f"{where}: unknown key 'roles.{role}.{sub}' (servers, model)")
            values = v if sub == "servers" and isinstance(v, list) else [v]
            if not all(isinstance(x, str) for x in values):
                raise ConfigError(f"{where}: key 'roles.{role}.{sub}': expected "
                                  f"{'a URL or a list of URLs' if sub == 'servers' else 'a string'}, got {v!r}")
            (servers if sub == "servers" else models).extend(f"{role}={x}" for x in values)
    if servers:
        flat["role_servers"] = ("roles", servers)
    if models:
        flat["role_models"] = ("roles", models)
    return {k: v for k, v in table.items() if k not in ROLES}


def config_from_mapping(data: Mapping[str, Any], where: str = "config",
                        base: Config | None = None) -> Config:
    values = (base or Config()).flat()
    for name, (key, value) in _flatten(data, where).items():
        try:
            values[name] = _check(name, value)
        except ValueError as exc:
            raise ConfigError(f"{where}: key '{key}': {exc}") from None
    try:
        return Config.from_flat(values)
    except ConfigError as exc:          # a check across settings
        raise ConfigError(f"{where}: {exc}") from None


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    return config_from_mapping(data, where=str(path))


# ------------------------------------------------------------ command line

def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_arguments(parser: argparse.ArgumentParser, *, config_flag: bool = True,
                         only: tuple[str, ...] | None = None) -> None:
    """`--config FILE` and one flag per field (`--verifier-k 4`, `--no-scoring`), with the
    default and the choices in each help line.

    Flags default to SUPPRESS, so only the ones given override the file.
    """
    group = parser.add_argument_group("configuration (overrides the --config file)")
    if config_flag:
        group.add_argument("--config", metavar="FILE", default=None, help="TOML config file")
    defaults = Config().flat()
    for name, f in FIELDS.items():
        if only is not None and name not in only:
            continue
        kind = _TYPES[name]
        meta = f.metadata
        flags = meta["flags"] or (flag_name(name),)
        help_text = meta["help"]
        if meta["choices"]:
            help_text += f"; one of: {', '.join(meta['choices'])}" + (" (comma-separated)" if kind is list else "")
        default = defaults[name]
        if not meta["secret"] and "(default" not in help_text and default not in ("", []):
            shown = ",".join(default) if isinstance(default, list) else default
            help_text += f" (default: {shown})"
        kw: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS,
                              "help": help_text.replace("%", "%%")}
        if kind is bool:
            group.add_argument(*flags, action=argparse.BooleanOptionalAction, **kw)
        elif kind is list and meta["flags"]:          # a repeatable flag (--server A --server B)
            group.add_argument(*flags, action="append", metavar=meta["metavar"] or "URL", type=str, **kw)
        elif kind is list:
            group.add_argument(*flags, metavar="A,B", type=str, **kw)
        elif meta["choices"]:
            group.add_argument(*flags, choices=meta["choices"], **kw)
        else:
            group.add_argument(*flags, type=kind, metavar=kind.__name__.upper(), **kw)


def apply_overrides(config: Config, args: argparse.Namespace) -> Config:
    values = config.flat()
    for name in FIELDS:
        if hasattr(args, name):
            try:
                values[name] = _check(name, getattr(args, name))
            except ValueError as exc:
                raise ConfigError(f"{(FIELDS[name].metadata['flags'] or (flag_name(name),))[0]}: "
                                  f"{exc}") from None
    return Config.from_flat(values)


def config_from_args(args: argparse.Namespace) -> Config:
    """The file named by --config (or the defaults), then the flags given."""
    path = getattr(args, "config", None)
    base = load_config(path) if path else Config()
    return apply_overrides(base, args)
