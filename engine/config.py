"""Every knob of a run in one dataclass: TOML file < CLI flags, a stable hash, a pretty dump.

The TOML file may list fields flat (`verifier_k = 8`) or under their section table
(`[verifiers]` then `verifier_k = 8` or `k = 8`). Fields marked volatile (where and how fast
to run) are left out of `config_hash()`: changing them does not change the data.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import orjson

from engine.errors import ConfigError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


def _f(default: Any, section: str, help: str, *, volatile: bool = False,
       lo: float | None = None, hi: float | None = None, choices: tuple = (),
       flags: tuple[str, ...] = (), secret: bool = False) -> Any:
    """A field; `flags`: its command-line spellings when not just --field-name (the first is the
    main one); `secret`: never printed nor written to summaries."""
    meta = {"section": section, "help": help, "volatile": volatile, "lo": lo, "hi": hi,
            "choices": choices, "flags": flags, "secret": secret}
    if isinstance(default, list):
        return field(default_factory=lambda d=tuple(default): list(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Config:
    # run
    model: str = _f("default", "run", "model name sent to the server and written into provenance "
                    "(default: the name the server reports)", flags=("--model", "--model-path"))
    servers: list[str] = _f([], "run", "LLM server base URL; repeat for several (none: `autoif run` starts one)",
                            volatile=True, flags=("--server",))
    api_key: str = _f("", "run", "API key sent as a bearer token (default: $OPENAI_API_KEY)",
                      volatile=True, secret=True)
    api: str = _f("auto", "run", "server protocol (auto: detect)", volatile=True,
                  choices=("auto", "sglang", "openai"))
    output_dir: str = _f("runs/autoif", "run", "run directory (state database, exports)", volatile=True)
    seed: int = _f(0, "run", "seed for sampling seeds, queries and LLM requests")
    seeds_path: str = _f("", "run", "seed instructions JSONL (empty: the built-in set)")
    queries_path: str = _f("", "run", "queries JSONL or ShareGPT JSONL (empty: the built-in set)")
    request_timeout_s: float = _f(600.0, "run", "timeout of one LLM request", volatile=True, lo=0.001)
    max_retries: int = _f(3, "run", "retries of a failed LLM request", volatile=True, lo=0)
    max_inflight_requests: int = _f(256, "run", "LLM requests in flight at once", volatile=True, lo=1)
    stage_concurrency: int = _f(64, "run", "items each stage processes at once", volatile=True, lo=1)
    max_bad_input_share: float = _f(0.1, "run", "bad lines skipped (with a warning) in a seeds or queries file, as a share of its lines; more refuses the run", volatile=True, lo=0, hi=1)
    # augment
    augment_batches: int = _f(8, "augment", "self-instruct prompts (each shows a sample of seeds)", lo=0)
    augment_seeds_shown: int = _f(8, "augment", "seed instructions shown in each prompt", lo=1)
    augment_per_prompt: int = _f(10, "augment", "new instructions asked for in each prompt", lo=1)
    augment_samples: int = _f(1, "augment", "answers sampled per augment prompt", lo=1)
    augment_max_new: int = _f(0, "augment", "new instructions kept per augment prompt at most, over all its answers, "
                              "the first in answer order (0: no cap)", lo=0)
    augment_style: str = _f("chat", "augment", "chat: ask for new constraints in a chat message; list: the seeds as "
                            "a numbered list the model continues as raw text (small models, which obey the "
                            "shown constraints when asked in chat, continue a list)", choices=("chat", "list"))
    augment_temperature: float = _f(0.9, "augment", "sampling temperature of augmentation", lo=0)
    augment_max_tokens: int = _f(1024, "augment", "max new tokens of an augment answer", lo=1)
    dedup_threshold: float = _f(0.7, "augment", "n-gram Jaccard at or above which an instruction is a near-duplicate", lo=0.01, hi=1)
    dedup_ngram: int = _f(2, "augment", "word n-gram size of dedup shingles", lo=1)
    checkable_filter: bool = _f(True, "augment", "ask the LLM whether each new instruction is code-checkable")
    # verifiers
    verifier_k: int = _f(8, "verifiers", "verification answers (function + cases) sampled per instruction", lo=1)
    verifier_temperature: float = _f(0.7, "verifiers", "sampling temperature of verifier generation", lo=0)
    verifier_max_tokens: int = _f(1536, "verifiers", "max new tokens of a verifier answer (json style) or function (code style)", lo=1)
    verifier_style: str = _f("code", "verifiers", "code: each function is a few-shot code completion and test cases a "
                             "separate JSON request (small models follow it); json: one JSON answer holds both",
                             choices=("code", "json"))
    verifier_case_style: str = _f("replies", "verifiers", "code style: replies: cases are replies written to obey the "
                                  "constraint (expected True) and plain replies to the same queries (expected False); "
                                  "lists: one JSON request for lists of passing and failing replies",
                                  choices=("replies", "lists"))
    verifier_case_samples: int = _f(2, "verifiers", "code style: test-case answers (lists) or queries replied to (replies) per instruction", lo=1)
    verifier_cases_per_side: int = _f(3, "verifiers", "code style: passing and failing cases asked for in each answer", lo=1)
    verifier_case_max_tokens: int = _f(768, "verifiers", "code style: max new tokens of a test-case answer", lo=1)
    # crossval
    case_agreement: float = _f(0.5, "crossval", "a case is kept when MORE than this share of functions agree with it", lo=0, hi=1)
    function_accuracy: float = _f(0.5, "crossval", "a function is kept when its accuracy on kept cases is MORE than this", lo=0, hi=1)
    min_functions: int = _f(1, "crossval", "an instruction needs at least this many kept functions", lo=1)
    min_cases: int = _f(1, "crossval", "an instruction needs at least this many kept cases", lo=1)
    two_sided_cases: bool = _f(True, "crossval", "an instruction needs kept cases expecting True AND cases expecting False")
    # backtranslate
    backtranslate: bool = _f(True, "backtranslate", "back-translate functions and drop contradicted ones")
    nli_model_path: str = _f("", "backtranslate", "local NLI model directory (transformers); empty: the LLM judges")
    nli_device: str = _f("cpu", "backtranslate", "device of the local NLI model", volatile=True)
    judge_temperature: float = _f(0.0, "backtranslate", "temperature of judge calls (checkable, back-translation, NLI, score)", lo=0)
    judge_max_tokens: int = _f(512, "backtranslate", "max new tokens of a judge answer", lo=1)
    # audit (reward-hacking trip wires: every kept function also runs on degenerate probes)
    audit: bool = _f(True, "audit", "run every kept function on degenerate probes (empty, restated, repeated, 10k words, echo)")
    audit_action: str = _f("flag", "audit", "what happens to a function that accepts probes", choices=("flag", "downweight", "drop"))
    audit_max_accepted: int = _f(0, "audit", "a function is flagged when it accepts MORE than this many probes", lo=0)
    audit_weight: float = _f(0.5, "audit", "reward weight of a flagged function when audit_action is downweight", lo=0, hi=1)
    # responses
    queries_per_instruction: int = _f(16, "responses", "queries joined to each instruction", lo=1)
    max_queries: int = _f(0, "responses", "cap on the queries joined in all, shared by the instructions in the order they "
                          "are verified; the rest get none (0: no cap; per shard under Ray, per round in online DPO)", lo=0)
    responses_k: int = _f(8, "responses", "responses sampled per (instruction, query)", lo=1)
    response_temperature: float = _f(0.7, "responses", "sampling temperature of responses", lo=0)
    response_max_tokens: int = _f(1024, "responses", "max new tokens of a response", lo=1)
    plain_rejects: bool = _f(False, "responses", "also verify a plain reply to each query (the query alone, without the "
                             "instruction): when it fails, it is the query-level DPO reject of a query none of whose "
                             "K samples failed (never an SFT answer)")
    pass_threshold: float = _f(0.5, "responses", "a response is kept when MORE than this share of functions pass it", lo=0, hi=1)
    # scoring
    scoring: bool = _f(True, "scoring", "have the LLM rate kept responses")
    score_min: int = _f(8, "scoring", "keep responses scored at least this (1-10)", lo=1, hi=10)
    score_until: int = _f(0, "scoring", "judge passed responses best first until this many per query are kept; "
                          "0: judge every one", lo=0)
    # pool
    pool_workers: int = _f(0, "pool", "sandbox worker processes (0: one per CPU core)", volatile=True, lo=0)
    pool_timeout_s: float = _f(2.0, "pool", "time limit of one sandbox job: one function over all its inputs", lo=0.001)
    pool_memory_mb: int = _f(512, "pool", "memory limit of a sandbox worker", lo=16)
    # A looping verifier costs its job's CPU budget, not the wall-clock timeout. An honest check
    # of a pipeline response takes tens of microseconds (the slowest of bench.workload's 35 over
    # a 10,000-word text: 2.1 ms), so 10 ms + 2 ms per input leaves one such check 5x and a
    # coalesced batch ~60x. At 50 ms, cross-validation's looping verifiers cost the simulator
    # run ~1 s of wall time (bench.pipeline).
    pool_cpu_base_s: float = _f(0.01, "pool", "CPU-time budget of one sandbox job: this much, plus pool_cpu_per_input_s per input", lo=0.001)
    pool_cpu_per_input_s: float = _f(0.002, "pool", "CPU-time budget per input of a sandbox job (checks it cuts are timeouts)", lo=0)
    pool_coalesce_window_s: float = _f(0.05, "pool", "how long a response check waits, while other queries of its instruction are generating, for their checks of the same functions to share its fork", lo=0)
    # export
    export_formats: list[str] = _f(["alpaca", "sharegpt", "trl"], "export", "SFT formats to write",
                                   choices=("alpaca", "sharegpt", "trl"))
    export_dpo: bool = _f(True, "export", "write DPO pairs (instruction and query level)")
    sft_per_query: int = _f(1, "export", "SFT examples kept per (instruction, query), best first", lo=1)
    dpo_pairs_per_instruction: int = _f(2, "export", "instruction-level DPO pairs per instruction", lo=0)
    parquet: bool = _f(True, "export", "also write Parquet (pyarrow)", volatile=True)
    grpo_band_low: float = _f(0.0, "export", "GRPO difficulty band: a prompt is mixed when its K-sample pass rate is MORE than this", lo=0, hi=1)
    grpo_band_high: float = _f(1.0, "export", "... and LESS than this", lo=0, hi=1)

    # ------------------------------------------------------------ views

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def public_dict(self) -> dict[str, Any]:
        """to_dict() with secrets masked: what summaries, reports and dumps show."""
        return {k: ("***" if v and FIELDS[k].metadata["secret"] else v) for k, v in self.to_dict().items()}

    def config_hash(self) -> str:
        """Hash of the fields that shape the data (volatile ones excluded); 12 hex digits."""
        stable = {f.name: getattr(self, f.name) for f in fields(self) if not f.metadata["volatile"]}
        return hashlib.sha256(orjson.dumps(stable, option=orjson.OPT_SORT_KEYS)).hexdigest()[:12]

    def dump(self) -> str:
        """TOML that load_config reads back, grouped by section, with each knob's help."""
        lines = [f"# config hash {self.config_hash()}"]
        section = ""
        for f in fields(self):
            if f.metadata["section"] != section:
                section = f.metadata["section"]
                lines.append(f"\n[{section}]")
            if f.metadata["secret"]:
                lines.append(f"# {f.name}: {f.metadata['help']} (not shown)")
                continue
            lines.append(f"{f.name} = {_toml_value(getattr(self, f.name))}  # {f.metadata['help']}")
        return "\n".join(lines) + "\n"


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in fields(Config)}
_TYPES = {f.name: type(f.default) if f.default is not dataclasses.MISSING else list for f in fields(Config)}


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
    return value


def _flatten(data: Mapping[str, Any], where: str) -> dict[str, tuple[str, Any]]:
    """field name -> (key as written, value); tables are sections of flat fields."""
    flat: dict[str, tuple[str, Any]] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                name = sub if sub in FIELDS else f"{key}_{sub}"
                if name not in FIELDS or FIELDS[name].metadata["section"] != key:
                    raise ConfigError(f"{where}: unknown key '{key}.{sub}'")
                flat[name] = (f"{key}.{sub}", v)
        elif key in FIELDS:
            flat[key] = (key, value)
        else:
            raise ConfigError(f"{where}: unknown key '{key}'")
    return flat


def config_from_mapping(data: Mapping[str, Any], where: str = "config",
                        base: Config | None = None) -> Config:
    values = (base or Config()).to_dict()
    for name, (key, value) in _flatten(data, where).items():
        try:
            values[name] = _check(name, value)
        except ValueError as exc:
            raise ConfigError(f"{where}: key '{key}': {exc}") from None
    return Config(**values)


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
    defaults = Config()
    for name, f in FIELDS.items():
        if only is not None and name not in only:
            continue
        kind = _TYPES[name]
        meta = f.metadata
        flags = meta["flags"] or (flag_name(name),)
        help_text = meta["help"]
        if meta["choices"]:
            help_text += f"; one of: {', '.join(meta['choices'])}" + (" (comma-separated)" if kind is list else "")
        default = getattr(defaults, name)
        if not meta["secret"] and "(default" not in help_text and default not in ("", []):
            shown = ",".join(default) if isinstance(default, list) else default
            help_text += f" (default: {shown})"
        kw: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS,
                              "help": help_text.replace("%", "%%")}
        if kind is bool:
            group.add_argument(*flags, action=argparse.BooleanOptionalAction, **kw)
        elif kind is list and meta["flags"]:          # a repeatable flag (--server A --server B)
            group.add_argument(*flags, action="append", metavar="URL", type=str, **kw)
        elif kind is list:
            group.add_argument(*flags, metavar="A,B", type=str, **kw)
        elif meta["choices"]:
            group.add_argument(*flags, choices=meta["choices"], **kw)
        else:
            group.add_argument(*flags, type=kind, metavar=kind.__name__.upper(), **kw)


def apply_overrides(config: Config, args: argparse.Namespace) -> Config:
    values = config.to_dict()
    for name in FIELDS:
        if hasattr(args, name):
            try:
                values[name] = _check(name, getattr(args, name))
            except ValueError as exc:
                raise ConfigError(f"{(FIELDS[name].metadata['flags'] or (flag_name(name),))[0]}: "
                                  f"{exc}") from None
    return Config(**values)


def config_from_args(args: argparse.Namespace) -> Config:
    """The file named by --config (or the defaults), then the flags given."""
    path = getattr(args, "config", None)
    base = load_config(path) if path else Config()
    return apply_overrides(base, args)
