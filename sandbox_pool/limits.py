"""Typed settings that travel from the pool to every worker, supervisor and zygote.

They cross a process boundary twice (multiprocess' pickling, then JSON on the exec'd
supervisor's command line), so they are plain frozen dataclasses of JSON-friendly
fields with a from_json() for the receiving end.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


# Checks built on the allowed third-party modules cost milliseconds, not microseconds
# (langdetect: 6.6 ms for a 280-word reply, against tens of us for a string check), so jobs of
# the zygote that has them get this many times the CPU budget; the wall clock stays the same.
THIRD_PARTY_BUDGET_FACTOR = 10.0


@dataclass(frozen=True, slots=True)
class Limits:
    """What one job may use, and which isolation layers the pool was told to leave out."""

    timeout_s: float  # wall clock per job: the backstop for everything else
    memory_mb: int  # address space per process (RLIMIT_AS) and the job cgroup's memory
    cpu_s: int  # RLIMIT_CPU per process: the kernel's last word
    # CPU-time budget per job (ITIMER_PROF): base + per input, so a looping verifier costs
    # milliseconds, not the wall-clock timeout. The defaults leave an honest string check
    # (tens of microseconds) a margin of hundreds.
    cpu_base_s: float
    cpu_per_input_s: float
    max_procs: int
    max_output_bytes: int
    max_file_mb: int
    max_scratch_mb: int
    max_scratch_files: int
    max_open_files: int
    max_value_chars: int
    allowed_modules: tuple[str, ...]
    sandbox_uid_base: int
    disable_layers: tuple[str, ...]
    nice: int  # workers run below the engine's priority

    def cpu_budget_s(self, n_inputs: int, third_party: bool = False) -> float:
        budget = self.cpu_base_s + self.cpu_per_input_s * n_inputs
        return budget * THIRD_PARTY_BUDGET_FACTOR if third_party else budget

    @classmethod
    def from_json(cls, data: dict) -> "Limits":
        values = {f.name: data[f.name] for f in fields(cls)}
        values["allowed_modules"] = tuple(values["allowed_modules"])
        values["disable_layers"] = tuple(values["disable_layers"])
        return cls(**values)


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
