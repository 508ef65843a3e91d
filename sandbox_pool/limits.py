"""Typed settings that travel from the pool to every worker, supervisor and zygote.

They cross a process boundary twice (multiprocess' pickling, then JSON on the exec'd
supervisor's command line), so they are plain frozen dataclasses of JSON-friendly
fields with a from_json() for the receiving end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields


# Checks built on the allowed third-party modules cost milliseconds, not microseconds
# (langdetect takes milliseconds on a reply of a few hundred words; a string check, tens of
# microseconds), so jobs of the zygote that has them get this many times the CPU budget; the
# wall clock stays the same.
THIRD_PARTY_BUDGET_FACTOR = 10.0

# Modules LLM-written AutoIF verifiers commonly need. Third-party ones are only
# pre-imported by workers when installed; importing a missing one is an "error".
DEFAULT_ALLOWED_MODULES: frozenset[str] = frozenset({
    "re", "string", "json", "math", "collections", "itertools", "functools", "operator",
    "unicodedata", "statistics", "textwrap", "difflib", "datetime", "random", "heapq",
    "bisect", "typing", "enum", "dataclasses", "decimal", "fractions", "html",
    "emoji", "nltk", "langdetect",
})

# Isolation layers a pool may be told to leave out (the rest have no switch).
DISABLEABLE = ("pid_namespace", "net_namespace", "landlock", "setuid", "env_scrub", "scratch_quota",
               "job_cgroup", "ipc_namespace")


@dataclass(frozen=True, slots=True)
class Limits:
    """What one job may use, and which isolation layers the pool was told to leave out."""

    timeout_s: float = 2.0  # wall clock per job: the backstop for everything else
    memory_mb: int = 512  # address space per process (RLIMIT_AS) and the job cgroup's memory
    cpu_s: int | None = None  # RLIMIT_CPU per process, the kernel's last word (None: ceil(timeout_s) + 1)
    # CPU-time budget per job (ITIMER_PROF): base + per input, so a looping verifier costs
    # milliseconds, not the wall-clock timeout. The defaults leave an honest string check
    # (tens of microseconds) a margin of hundreds.
    cpu_base_s: float = 0.2
    cpu_per_input_s: float = 0.01
    max_procs: int = 16
    max_output_bytes: int = 4096
    max_file_mb: int = 16
    max_scratch_mb: int = 64
    max_scratch_files: int = 4096
    max_open_files: int = 64
    max_value_chars: int = 1024
    allowed_modules: tuple[str, ...] = tuple(sorted(DEFAULT_ALLOWED_MODULES))
    sandbox_uid_base: int = 61000
    disable_layers: tuple[str, ...] = ()
    # Verification soaks up spare CPU; the event loop feeding the server (and a server on the
    # same node) must not wait behind it, so workers run at a lower priority.
    nice: int = 5

    def __post_init__(self):
        if self.timeout_s <= 0 or self.memory_mb <= 0:
            raise ValueError("timeout_s and memory_mb must be positive")
        unknown = set(self.disable_layers) - set(DISABLEABLE)
        if unknown:
            raise ValueError(f"unknown layers {sorted(unknown)}; choose from {DISABLEABLE}")
        # Any iterable of names is accepted; kept sorted and unique so that equal settings are equal.
        object.__setattr__(self, "allowed_modules", tuple(sorted(set(self.allowed_modules))))
        object.__setattr__(self, "disable_layers", tuple(sorted(set(self.disable_layers))))
        if self.cpu_s is None:
            object.__setattr__(self, "cpu_s", math.ceil(self.timeout_s) + 1)

    def cpu_budget_s(self, n_inputs: int, third_party: bool = False) -> float:
        budget = self.cpu_base_s + self.cpu_per_input_s * n_inputs
        return budget * THIRD_PARTY_BUDGET_FACTOR if third_party else budget

    @classmethod
    def from_json(cls, data: dict) -> "Limits":
        return cls(**{f.name: data[f.name] for f in fields(cls)})


@dataclass(frozen=True, slots=True)
class WorkerCgroup:
    """What one worker's jobs need of its job cgroup: files to join, the OOM killer's count."""

    procs: tuple[str, ...]  # cgroup.procs files; a job writes "0" to each to join
    oom_events: str  # memory.events (v2) or memory.oom_control (v1): an "oom_kill N" line
    pids: bool  # the process count is limited too


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """Everything one worker is started with."""

    limits: Limits
    index: int
    scratch_root: str
    cgroup: WorkerCgroup | None  # None: no job cgroup, for cgroup_why
    cgroup_why: str

    @classmethod
    def from_json(cls, data: dict) -> "WorkerSpec":
        cg = data["cgroup"]
        return cls(Limits.from_json(data["limits"]), data["index"], data["scratch_root"],
                   WorkerCgroup(tuple(cg["procs"]), cg["oom_events"], cg["pids"]) if cg else None,
                   data["cgroup_why"])
