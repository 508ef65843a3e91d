"""Job cgroups: memory (swap off) and process limits that cover a job's children and shared memory.

RLIMIT_AS bounds one process' address space; it does not see a job's forked children,
memfds, SysV segments or tmpfs files. A memory cgroup charges all of them. The pool
makes one cgroup per worker beneath its own cgroup (jobs of a worker run one at a
time, so that is a cgroup per job); each job joins it before its code runs and the
limits apply to the job and everything it starts. cgroup v2 is used where the pool's
cgroup can delegate the memory and pids controllers, else v1's memory and pids
hierarchies. Where neither is writable (not root, no controllers) the pool keeps the
rlimits and reports the `job_cgroup` layer as degraded.
"""

from __future__ import annotations

import os

from ..limits import WorkerCgroup

# Copy-on-write copies of the zygote's pages that every job dirties count against the cgroup
# but not against memory_mb's RLIMIT_AS headroom; allow for them so honest jobs see the same limit.
_HEADROOM = 32 << 20
_PREFIX = "sandbox_pool-"


def _own_paths() -> dict[str, str]:
    """{controller or "" for v2: cgroup path} of this process."""
    paths = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            parts = line.rstrip("\n").split(":", 2)
            if len(parts) != 3:
                continue
            _, controllers, path = parts
            if controllers == "":
                paths[""] = path
            for c in controllers.split(","):
                if c:
                    paths[c] = path
    return paths


def _mounts() -> dict[str, tuple[str, str]]:
    """{controller or "" for v2: (mount point, root of the hierarchy seen there)}."""
    found: dict[str, tuple[str, str]] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if len(fields) < 5 or len(rfields) < 3:
                continue
            root, point = fields[3], fields[4].replace("\\040", " ")
            if rfields[0] == "cgroup2":
                found.setdefault("", (point, root))
            elif rfields[0] == "cgroup":
                for opt in rfields[2].split(","):
                    if opt in ("memory", "pids"):
                        found.setdefault(opt, (point, root))
    return found


def _dir_of(mount: tuple[str, str], path: str) -> str | None:
    point, root = mount
    if root != "/" and not (path == root or path.startswith(root.rstrip("/") + "/")):
        return None  # our cgroup is not visible through this mount
    rel = path[len(root):] if root != "/" else path
    return os.path.join(point, rel.lstrip("/"))


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _remove(path: str) -> None:
    """rmdir a pool cgroup and its worker cgroups (their processes are already gone)."""
    try:
        names = [e.name for e in os.scandir(path) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return
    for name in names:
        try:
            os.rmdir(os.path.join(path, name))
        except OSError:
            pass
    try:
        os.rmdir(path)
    except OSError:
        pass


def _sweep_stale(base: str) -> None:
    """Remove pool cgroups left behind by pools whose process is gone (killed, never closed)."""
    try:
        names = [e.name for e in os.scandir(base) if e.name.startswith(_PREFIX)]
    except OSError:
        return
    for name in names:
        try:
            pid = int(name[len(_PREFIX):].split("-", 1)[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            _remove(os.path.join(base, name))
        except (ValueError, PermissionError):
            pass


class JobCgroups:
    """The pool's cgroup(s) and one child per worker; create() says why when it cannot."""

    def __init__(self, version: int, roots: dict[str, str]):
        self.version = version
        self.roots = roots  # controller ("" on v2) -> the pool's own cgroup directory

    @classmethod
    def create(cls) -> tuple["JobCgroups | None", str]:
        if os.geteuid() != 0:
            return None, "not running as root: cannot create cgroups"
        try:
            own, mounts = _own_paths(), _mounts()
        except OSError as e:
            return None, f"cannot read this process' cgroups: {e.strerror}"
        name = f"{_PREFIX}{os.getpid()}-{os.urandom(3).hex()}"
        reasons = []
        if "" in mounts and "" in own:
            made, why = cls._create_v2(_dir_of(mounts[""], own[""]), name)
            if made:
                return made, ""
            reasons.append(f"cgroup v2: {why}")
        else:
            reasons.append("cgroup v2: not mounted")
        if "memory" in mounts and "memory" in own:
            made, why = cls._create_v1(mounts, own, name)
            if made:
                return made, ""
            reasons.append(f"cgroup v1: {why}")
        else:
            reasons.append("cgroup v1: no memory controller mounted")
        return None, "; ".join(reasons)

    @classmethod
    def _create_v2(cls, base: str | None, name: str):
        if base is None:
            return None, "own cgroup not visible"
        try:
            with open(os.path.join(base, "cgroup.controllers")) as f:
                available = set(f.read().split())
        except OSError as e:
            return None, f"cannot read controllers: {e.strerror}"
        if "memory" not in available:
            return None, "memory controller not available to this cgroup"
        wanted = [c for c in ("memory", "pids") if c in available]
        try:
            # Fails (EBUSY) when our own cgroup holds processes and is not the root: v2's rule
            # that only leaves hold processes. Run the pool in a delegated cgroup then.
            _write(os.path.join(base, "cgroup.subtree_control"), " ".join("+" + c for c in wanted))
            _sweep_stale(base)
            pool = os.path.join(base, name)
            os.mkdir(pool, 0o755)
            _write(os.path.join(pool, "cgroup.subtree_control"), " ".join("+" + c for c in wanted))
        except OSError as e:
            return None, f"cannot delegate {'+'.join(wanted)} below {base}: {e.strerror}"
        return cls(2, {"": pool}), ""

    @classmethod
    def _create_v1(cls, mounts: dict, own: dict, name: str):
        roots = {}
        for controller in ("memory", "pids"):
            if controller not in mounts or controller not in own:
                continue
            base = _dir_of(mounts[controller], own[controller])
            if base is None:
                continue
            try:
                _sweep_stale(base)
                pool = os.path.join(base, name)
                os.mkdir(pool, 0o755)
                roots[controller] = pool
            except OSError as e:
                if controller == "memory":
                    for made in roots.values():
                        _remove(made)
                    return None, f"cannot create {base}/{name}: {e.strerror}"
        return cls(1, roots), ""

    def worker(self, index: int, memory_mb: int, max_procs: int) -> WorkerCgroup:
        """Create (or reuse) worker `index`'s cgroup with its limits. Raises OSError."""
        limit = memory_mb * (1 << 20) + _HEADROOM
        if self.version == 2:
            d = os.path.join(self.roots[""], f"w{index}")
            os.makedirs(d, 0o755, exist_ok=True)
            _write(os.path.join(d, "memory.max"), str(limit))
            has_swap = os.path.exists(os.path.join(d, "memory.swap.max"))
            if has_swap:
                _write(os.path.join(d, "memory.swap.max"), "0")
            pids = os.path.exists(os.path.join(d, "pids.max"))
            if pids:
                _write(os.path.join(d, "pids.max"), str(max_procs))
            return WorkerCgroup((os.path.join(d, "cgroup.procs"),), os.path.join(d, "memory.events"), pids)
        mem = os.path.join(self.roots["memory"], f"w{index}")
        os.makedirs(mem, 0o755, exist_ok=True)
        _write(os.path.join(mem, "memory.limit_in_bytes"), str(limit))
        if os.path.exists(os.path.join(mem, "memory.memsw.limit_in_bytes")):
            _write(os.path.join(mem, "memory.memsw.limit_in_bytes"), str(limit))  # memory+swap = memory
        else:
            try:
                _write(os.path.join(mem, "memory.swappiness"), "0")
            except OSError:
                pass
        procs = [os.path.join(mem, "cgroup.procs")]
        pids = "pids" in self.roots
        if pids:
            p = os.path.join(self.roots["pids"], f"w{index}")
            os.makedirs(p, 0o755, exist_ok=True)
            _write(os.path.join(p, "pids.max"), str(max_procs))
            procs.append(os.path.join(p, "cgroup.procs"))
        return WorkerCgroup(tuple(procs), os.path.join(mem, "memory.oom_control"), pids)

    def remove(self) -> None:
        for root in self.roots.values():
            _remove(root)

    def empty(self) -> bool:
        """True when no process is left in any worker cgroup (so remove() can succeed)."""
        for root in self.roots.values():
            try:
                for e in os.scandir(root):
                    if e.is_dir(follow_symlinks=False):
                        with open(os.path.join(e.path, "cgroup.procs")) as f:
                            if f.read().strip():
                                return False
            except OSError:
                pass
        return True


def oom_kills(fd: int) -> int:
    """The "oom_kill N" counter from an open memory.events / memory.oom_control file."""
    data = os.pread(fd, 4096, 0)
    for line in data.split(b"\n"):
        if line.startswith(b"oom_kill "):
            return int(line.split()[1])
    return 0
