"""The per-worker supervisor: warms up, prepares confinement, talks to the pool.

It runs in a freshly exec'd interpreter (see entry.py), imports the allowed
stdlib modules, builds the Landlock ruleset, then forks the zygote (PID 1 of the
worker's PID namespace), which forks one disposable job process per job. For each job
the supervisor writes the inputs into a memfd, hands the zygote a small request,
reads back how the job ended, parses the job's verdicts from shared memory and
answers the pool. Untrusted code never runs in this process or in a zygote.

Allowed third-party modules (nltk pulls in numpy) live in a second zygote, forked after
they are imported, in a PID namespace of its own. Fork and exit cost grows with the
forking image, several-fold from the lean zygote to one holding numpy, so only code that
names such a module pays it.
Jobs still run one at a time per worker, whichever zygote forks them.
"""

from __future__ import annotations

import fcntl
import gc
import importlib
import importlib.util
import marshal
import mmap
import os
import pkgutil
import pwd
import select
import signal
import socket
import sys
import sysconfig
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass, field

import orjson

from ..channel import Channel
from ..kernel import isolation
from ..kernel.cgroups import oom_kills
from ..limits import THIRD_PARTY_BUDGET_FACTOR, WorkerSpec
from ..outcome import C_CRASHED, C_MEMORY, C_OK, C_TIMEOUT, one_line
from . import verdicts, zygote

_COMPILE_CACHE = 256
_UID_LOCK_DIR = "/run/lock/sandbox_pool"
_UID_LOCK_FALLBACK = "/tmp/sandbox_pool-uid-locks"
# Imported lazily by allowed modules or str methods (codecs for str.encode, strptime...).
_LAZY_STDLIB = ("_strptime", "calendar", "locale", "stringprep", "encodings.idna", "encodings.punycode",
                "encodings.ascii", "encodings.latin_1", "encodings.cp1252", "encodings.utf_16",
                "encodings.utf_16_le", "encodings.utf_16_be", "encodings.utf_32", "encodings.utf_32_le",
                "encodings.utf_32_be", "encodings.utf_8_sig", "encodings.unicode_escape",
                "encodings.raw_unicode_escape", "encodings.charmap")
# Read-only places a confined job may need: the interpreter, stdlib, site-packages and
# shared libraries. Deliberately not /proc, /home, /root or the project checkout.
_SYSTEM_READ_PATHS = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc/localtime",
                      "/etc/ld.so.cache", "/dev/urandom", "/dev/zero")


def _part_size(sizes, index: int) -> int:
    """Inputs in the part of a job that input `index` belongs to: its CPU budget's size."""
    for size in sizes:
        if index < size:
            return size
        index -= size
    return sizes[-1]


def boot(args: dict) -> None:
    """Run a supervisor on the pool connection fd given in `args`; never returns."""
    channel = Channel(args["fd"])
    try:
        spec = args["spec"]
        if not isinstance(spec, WorkerSpec):  # decoded from the command line's JSON
            spec = WorkerSpec.from_json(spec)
        sup = Supervisor(spec, channel, dict(args["layers"]), dict(args["why"]))
        sup.setup()
    except BaseException:
        try:
            channel.send_bytes(orjson.dumps({"fatal": traceback.format_exc(limit=8)}))
        finally:
            os._exit(1)
    sup.serve()
    os._exit(0)


def _claim_uid(base: int, index: int) -> tuple[int, int]:
    """An unused uid at or above base + index, held for this worker's lifetime via an flock.

    Pools in other processes on the host (tests, benchmarks, the engine) would otherwise share
    uids: one RLIMIT_NPROC budget, and -- without a PID namespace -- one another's kill sweeps.
    The lock fd is inherited by the zygote (not by jobs), so it is released when both are gone.
    """
    lock_dir = _UID_LOCK_DIR if os.path.isdir(os.path.dirname(_UID_LOCK_DIR)) else _UID_LOCK_FALLBACK
    os.makedirs(lock_dir, mode=0o755, exist_ok=True)
    for uid in range(base + index, base + 65536):
        try:
            pwd.getpwuid(uid)
            continue  # a real account: its processes must never be swept
        except KeyError:
            pass
        fd = os.open(os.path.join(lock_dir, f"uid-{uid}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return uid, fd
        except BlockingIOError:
            os.close(fd)
    raise RuntimeError(f"no free sandbox uid at or above {base}")


_ONE_THREAD = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


# Allowed modules whose first call loads data files: done once here, not in every job (which
# could neither afford it within its CPU budget nor, as another uid, always read the files).
_WARM_UP = {"langdetect": ("langdetect.detector_factory", "init_factory")}


def _spec(name: str):
    """The installed module's spec, without importing it; None when it is not installed."""
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


def _locations(spec) -> set[str]:
    """Directories an installed, not yet imported module is read from."""
    found = set(spec.submodule_search_locations or ())
    if spec.origin and os.path.isabs(spec.origin):
        found.add(os.path.dirname(spec.origin))
    return found


def _try_import(name: str) -> None:
    try:
        importlib.import_module(name)
    except BaseException:
        pass


@dataclass
class _Link:
    """The supervisor's end of one zygote: its control socket and a mirror of its code cache."""

    pid: int
    ctl: int
    heavy: bool  # forked after the third-party modules were imported
    code_ids: OrderedDict = field(default_factory=OrderedDict)
    next_code_id: int = 0
    seq: int = 0


def _names(code) -> set[str]:
    """Every global, attribute and imported-module name the code object or its nested ones use."""
    names, todo = set(), [code]
    while todo:
        c = todo.pop()
        names.update(c.co_names)
        todo.extend(k for k in c.co_consts if hasattr(k, "co_names"))
    return names


def _compiled(code: str) -> tuple[bytes, int]:
    """The verifier compiled once here and marshalled for the zygote, which every job inherits
    it from; (bytes, request flags).

    Compiling only parses (no code runs), is bounded in CPython 3.11 (constant folding is
    size-capped), and this process never forks again, so its allocations cost no copy-on-write
    faults. Code objects are immutable; each job still runs the module body in a fresh
    namespace. On failure the job compiles the source itself and reports the error like any other.
    """
    try:
        return marshal.dumps(compile(code, "<verifier>", "exec")), zygote.FLAG_CODE_MARSHALLED
    except BaseException:
        return code.encode("utf-8", "surrogatepass"), 0


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


class Supervisor:
    def __init__(self, spec: WorkerSpec, conn: Channel, layers: dict, why: dict):
        self.spec = spec
        self.limits = spec.limits
        self.conn = conn
        self.index = spec.index
        self.layers = layers  # layer name -> bool, what is really in force
        self.why = why  # layer name -> reason it is not
        self.disabled = set(self.limits.disable_layers)
        self.ruleset_fd: int | None = None
        self.uid: int | None = None
        self.lean: _Link | None = None  # the zygote every job goes to...
        self.heavy: _Link | None = None  # ...unless its code names a third-party module
        self.heavy_names: frozenset[str] = frozenset()
        self.job_ipc = True  # jobs unshare an IPC namespace each (dropped if the probe fails it)
        # Allowed top-level modules bound in every verifier's globals: small models often use
        # `re` or `string` without importing it, and those modules are imported here anyway.
        self.prebound: dict[str, object] = {}

    # ---- startup -------------------------------------------------------------------------

    def setup(self) -> None:
        for fd in (0, 1, 2):  # pipes must never land on 0-2, which the job re-points
            try:
                os.fstat(fd)
            except OSError:
                os.open("/dev/null", os.O_RDWR)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the pool's business
        os.chdir("/")
        if "env_scrub" in self.disabled:
            self._set("env_scrub", False, "disabled by configuration")
        else:  # exec'd with an empty environment already; this also clears what Python set itself
            self._set("env_scrub", isolation.scrub_environment(), "could not locate the environment block")
        allowed = self.limits.allowed_modules
        third_party = [m for m in allowed if m.split(".", 1)[0] not in sys.stdlib_module_names]
        self._preimport([m for m in allowed if m not in third_party])
        # Installed ones, by name: their specs say where Landlock must let jobs read them.
        self.third_party = {m: spec for m in third_party if (spec := _spec(m)) is not None}

        if "setuid" in self.disabled:
            self._set("setuid", False, "disabled by configuration")
        elif os.geteuid() != 0:
            self._set("setuid", False, "not running as root: jobs keep the pool's uid")
        else:
            self.uid, self.uid_lock = _claim_uid(self.limits.sandbox_uid_base, self.index)
            self._set("setuid", True)
        self._open_cgroup()
        # RLIMIT_NPROC counts every process of the uid, so it is only meaningful for our own uid;
        # a pids cgroup counts the job's processes whatever their uid.
        self._set("fork_limit", self.uid is not None or self.pids_cgroup,
                  "needs a dedicated uid (setuid layer) or a pids cgroup")

        self.scratch = os.path.join(self.spec.scratch_root, f"w{self.index}")
        os.makedirs(self.scratch, mode=0o711, exist_ok=True)
        os.chmod(self.scratch, 0o711)
        # With the scratch_quota layer, job dirs live on a tmpfs mounted at jobs/ (entry.py).
        self.jobs_dir = os.path.join(self.scratch, "jobs") if self.layers.get("scratch_quota") else self.scratch
        self._build_landlock()

        # Inputs go to the job through one memfd, verdicts come back through another.
        self.job_fd = os.memfd_create("sandbox-job", os.MFD_CLOEXEC)
        self.verdict_fd = os.memfd_create("sandbox-verdicts", os.MFD_CLOEXEC)
        self.vsize = 0
        self.vmap: mmap.mmap | None = None
        self.lean = self._start_zygote(heavy=False)
        self._probe()
        self._start_heavy()

    def _open_cgroup(self) -> None:
        """Open the worker's job cgroup files, which every job joins before its code runs."""
        self.cgroup_fds: tuple[int, ...] = ()
        self.oom_fd: int | None = None
        self.oom_seen = 0
        self.pids_cgroup = False
        cg = self.spec.cgroup
        if "job_cgroup" in self.disabled:
            self._set("job_cgroup", False, "disabled by configuration")
            return
        if not cg:
            self._set("job_cgroup", False, self.spec.cgroup_why or "no cgroup")
            return
        try:
            self.cgroup_fds = tuple(os.open(p, os.O_WRONLY | os.O_CLOEXEC) for p in cg.procs)
            self.oom_fd = os.open(cg.oom_events, os.O_RDONLY | os.O_CLOEXEC)
            self.oom_seen = oom_kills(self.oom_fd)
        except OSError as e:
            self._set("job_cgroup", False, f"cannot open the worker's cgroup: {e.strerror}")
            self.cgroup_fds = ()
            return
        self.pids_cgroup = cg.pids
        self._set("job_cgroup", True)

    def _set(self, layer: str, ok: bool, reason: str = "") -> None:
        self.layers[layer] = bool(ok)
        if ok:
            self.why.pop(layer, None)
        else:
            self.why[layer] = reason

    def _preimport(self, names: list[str]) -> None:
        """Import allowed modules now, plus what they import lazily.

        Besides speed this matters for correctness: the job's uid may be unable to read the
        stdlib at all (e.g. a pyenv Python under /root), so a lazy import inside a job fails.
        """
        stdlib = os.path.realpath(sysconfig.get_paths()["stdlib"])
        # A numeric library an allowed module pulls in (nltk imports numpy) reads these once,
        # when loaded, and must not start a thread pool in a zygote (every job would inherit it;
        # under the jobs' limits it fails noisily). Unset again afterwards, so jobs still see an
        # empty environment.
        os.environ.update(dict.fromkeys(_ONE_THREAD, "1"))
        try:
            self._import_all(names, stdlib)
        finally:
            for name in _ONE_THREAD:
                os.environ.pop(name, None)

    def _import_all(self, names: list[str], stdlib: str) -> None:
        for name in names:
            try:
                mod = importlib.import_module(name)
            except BaseException:
                continue  # allowed but not installed: importing it in a job is an ordinary error
            if "." not in name:
                self.prebound[name] = mod
            if name in _WARM_UP:
                module, function = _WARM_UP[name]
                try:
                    getattr(importlib.import_module(module), function)()
                except BaseException:
                    pass  # a version without it: the job pays on first use
            # Submodules of allowed stdlib packages (json.decoder, html.parser, collections.abc...).
            path = getattr(mod, "__path__", None)
            if path and os.path.realpath(getattr(mod, "__file__", "") or "").startswith(stdlib):
                for info in pkgutil.iter_modules(path, name + "."):
                    if info.name.rsplit(".", 1)[-1] not in ("__main__", "tool", "tests", "test"):
                        _try_import(info.name)
        for name in _LAZY_STDLIB:
            _try_import(name)

    def _read_paths(self) -> set[str]:
        paths = set(_SYSTEM_READ_PATHS)
        paths.update({sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix})
        for key in ("stdlib", "platstdlib", "purelib", "platlib"):
            try:
                paths.add(sysconfig.get_paths()[key])
            except KeyError:
                pass
        # Allowed packages installed somewhere unusual (editable installs, user site).
        allowed = self.limits.allowed_modules
        for name, mod in list(sys.modules.items()):
            if name.split(".", 1)[0] in allowed:
                f = getattr(mod, "__file__", None)
                if isinstance(f, str):
                    paths.add(os.path.dirname(os.path.abspath(f)))
        for spec in self.third_party.values():  # not imported yet: the second zygote imports them later
            paths.update(_locations(spec))
        return {p for p in paths if p and os.path.exists(p)}

    def _build_landlock(self) -> None:
        abi = isolation.landlock_abi()
        if "landlock" in self.disabled:
            reason = "disabled by configuration"
        elif abi <= 0:
            reason = "kernel has no Landlock (or it is disabled)"
        else:
            reason = ""
        if reason:
            for layer in ("landlock_fs", "landlock_net", "landlock_scope"):
                self._set(layer, False, reason)
            return
        fd, extras = isolation.create_ruleset(abi, restrict_net=True, restrict_scope=True)
        for path in self._read_paths():
            isolation.add_path_rule(fd, path, isolation.FS_READ_RIGHTS, abi)
        isolation.add_path_rule(fd, "/dev/null", isolation.FS_READ_RIGHTS | isolation.FS_WRITE_FILE
                                | isolation.FS_TRUNCATE, abi)
        # Everything beneath this worker's scratch dir; DAC confines the job to its own job dir.
        isolation.add_path_rule(fd, self.scratch, isolation.handled_fs_rights(abi), abi)
        self.ruleset_fd = fd
        self._set("landlock_fs", True)
        self._set("landlock_net", extras["landlock_net"], f"Landlock ABI {abi} < 4: no TCP rules")
        self._set("landlock_scope", extras["landlock_scope"], f"Landlock ABI {abi} < 6: no signal/socket scoping")

    def _start_zygote(self, heavy: bool) -> _Link:
        ours, theirs = socket.socketpair()
        ctl = ours.detach()
        zfd = theirs.detach()
        devnull = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        pid_ns = self.layers.get("pid_namespace", False)
        # Layers the lean zygote's probe dropped are left out of a later zygote from the start.
        ruleset_fd = self.ruleset_fd if self.layers.get("landlock_fs") else None
        cgroup_fds = self.cgroup_fds if self.layers.get("job_cgroup") else ()
        gc.collect()
        gc.freeze()  # keeps forked jobs from dirtying copy-on-write pages during GC
        pid = os.fork()  # in a fresh PID namespace this child is its PID 1
        if pid == 0:
            try:
                isolation.set_parent_death_signal(signal.SIGKILL)
                os.close(ctl)
                os.close(self.conn.fd)  # the pool's connection stays with the supervisor
                if self.lean is not None:
                    os.close(self.lean.ctl)
                zygote.Zygote(self.limits, zfd, self.job_fd, self.verdict_fd, devnull, self.jobs_dir,
                              ruleset_fd, self.uid, pid_ns, self.prebound,
                              scratch_tmpfs=self.jobs_dir != self.scratch,
                              ipc_ns=self.layers.get("ipc_namespace", False),
                              cgroup_fds=cgroup_fds, third_party=heavy,
                              ipc_per_job=self.job_ipc).serve()
            finally:
                os._exit(1)
        os.close(zfd)
        os.close(devnull)
        if pid_ns and pid != 1 and os.readlink(f"/proc/{pid}/ns/pid") == os.readlink("/proc/self/ns/pid"):
            self._set("pid_namespace", False, "zygote did not land in a new PID namespace")
        return _Link(pid, ctl, heavy)

    def _start_heavy(self) -> None:
        """Import the allowed third-party modules and fork a second zygote with them."""
        if not self.third_party:
            return
        if self.layers.get("pid_namespace"):
            try:  # the lean zygote kills everything in its namespace after each job
                isolation.new_pid_namespace_for_children()
            except OSError as e:
                self.why["third_party_modules"] = (f"no second PID namespace ({e.strerror}): "
                                                   f"{', '.join(self.third_party)} import inside each job")
                return
        self._preimport(list(self.third_party))
        # Only those that imported: a broken install stays an ordinary error in a job.
        self.heavy_names = frozenset(m.split(".", 1)[0] for m in self.third_party if m in sys.modules)
        if not self.heavy_names:
            return
        self.heavy = self._start_zygote(heavy=True)
        probe = f"import {sorted(self.heavy_names)[0]}\ndef evaluate(x):\n    return x\n"  # routed there
        tags, recs, output, _, setup_error = self.run_job(probe, 1, b"[7]")
        if tags != "R" or recs[0] != [C_OK, 7, ""]:
            raise RuntimeError(f"sandbox self-test of the third-party zygote failed: {recs} "
                               f"{setup_error or ''} {output!r}")

    def _probe(self) -> None:
        """Run one trivial job through the full confinement; drop a layer that cannot be applied."""
        flags = 0
        for _ in range(5):  # each failed round drops one layer
            tags, recs, output, _, setup_error = self.run_job("def evaluate(x):\n    return x\n", 1, b"[7]", flags)
            if tags == "R" and recs[0] == [C_OK, 7, ""]:
                return
            layer = (setup_error or {}).get("layer")
            reason = (setup_error or {}).get("setup_error")
            if layer == "landlock_fs":
                flags |= zygote.FLAG_DROP_LANDLOCK
                for name in ("landlock_fs", "landlock_net", "landlock_scope"):
                    self._set(name, False, f"restricting failed: {reason}")
            elif layer == "ipc_namespace":  # the worker's own namespace is swept after each job
                flags |= zygote.FLAG_DROP_JOB_IPC
                self.job_ipc = False
            elif layer == "job_cgroup":
                flags |= zygote.FLAG_DROP_CGROUP
                self._set("job_cgroup", False, f"joining failed: {reason}")
                self._set("fork_limit", self.uid is not None, "needs a dedicated uid (setuid layer)")
            elif layer == "setuid":
                flags |= zygote.FLAG_DROP_SETUID
                self.uid = None
                self._set("setuid", False, f"switching uid failed: {reason}")
                self._set("fork_limit", False, "needs a dedicated uid (setuid layer)")
            else:
                raise RuntimeError(f"sandbox self-test failed: {recs} {reason or ''} {output!r}")
        raise RuntimeError("sandbox self-test did not converge")

    # ---- serving -------------------------------------------------------------------------

    def hello(self) -> bytes:
        return orjson.dumps({"hello": os.getpid(), "uid": self.uid, "layers": self.layers, "why": self.why})

    def serve(self) -> None:
        self.conn.send_bytes(self.hello())
        # While idle, also watch the zygote: if it dies, say so now rather than on the next job.
        idle = select.poll()
        idle.register(self.conn.fd, select.POLLIN)
        zygotes = {link.ctl for link in (self.lean, self.heavy) if link is not None}
        for fd in zygotes:
            idle.register(fd, select.POLLIN)
        while True:
            if any(fd in zygotes for fd, _ in idle.poll()):
                self.conn.send_bytes(orjson.dumps({"fatal": "zygote process died"}))
                return
            try:
                frame = self.conn.recv_bytes()
            except (EOFError, OSError):
                return  # the pool went away
            t0 = time.monotonic()
            # [job_id, n, code(, part sizes)] then a newline then the inputs' JSON, which only
            # the job decodes.
            cut = frame.index(b"\n")
            job_id, n, code, *rest = orjson.loads(memoryview(frame)[:cut])
            parts = rest[0] if rest else ()
            try:
                tags, recs, output, elapsed, _ = self.run_job(code, n, memoryview(frame)[cut + 1:],
                                                              parts=parts)
            except (EOFError, ConnectionError):  # the zygote is gone: let the pool replace this worker
                self.conn.send_bytes(orjson.dumps({"fatal": "zygote process died"}))
                return
            except Exception as e:  # e.g. scratch dir could not be created: fail the job, not the worker
                recs = [[C_CRASHED, None, one_line(f"supervisor error: {type(e).__name__}: {e}")]] * n
                tags, output, elapsed = "R" * n, "", time.monotonic() - t0
            busy = time.monotonic() - t0
            self.conn.send_bytes(orjson.dumps([job_id, tags, recs, output, elapsed, busy]))

    # ---- one job ----------------------------------------------------------------------------

    def _code_id(self, code: str) -> tuple[_Link, int, int, bytes, int]:
        """(zygote, id, id to evict or -1, code to send if the zygote lacks it, request flags)."""
        for link in (self.lean, self.heavy):
            cid = link.code_ids.get(code) if link is not None else None
            if cid is not None:
                link.code_ids.move_to_end(code)
                return link, cid, -1, b"", 0
        source, code_flags = _compiled(code)
        link = self.lean
        if self.heavy is not None and code_flags & zygote.FLAG_CODE_MARSHALLED:
            # Any mention of a third-party module's name (an import, a pre-bound global, an
            # attribute) sends the code to the zygote that has it; routing is not a security
            # boundary: code that reaches a module some other way runs confined all the same.
            if not self.heavy_names.isdisjoint(_names(marshal.loads(source))):
                link = self.heavy
        cid = link.next_code_id
        link.next_code_id += 1
        link.code_ids[code] = cid
        evict = -1
        if len(link.code_ids) > _COMPILE_CACHE:
            evict = link.code_ids.popitem(last=False)[1]
        return link, cid, evict, source, code_flags

    def run_job(self, code: str, n: int, inputs_json, flags: int = 0, parts=()):
        if parts and (sum(parts) != n or min(parts) < 1):
            raise ValueError(f"part sizes {parts} do not add up to {n} inputs")
        # Fresh, zero-filled verdict file (truncating frees the previous job's pages).
        need = verdicts.region_size(n, self.limits.max_value_chars)
        if need > self.vsize:
            self.vsize = need
            if self.vmap is not None:
                self.vmap.close()
            self.vmap = None
        os.ftruncate(self.verdict_fd, 0)
        os.ftruncate(self.verdict_fd, self.vsize)
        if self.vmap is None:
            self.vmap = mmap.mmap(self.verdict_fd, self.vsize)
        os.ftruncate(self.job_fd, 0)  # the job must not find an earlier job's inputs either
        os.pwrite(self.job_fd, inputs_json, 0)

        link, cid, evict, source, code_flags = self._code_id(code)
        zygote.write_all(link.ctl, zygote.REQUEST.pack(link.seq, cid, evict, len(source), n, flags | code_flags,
                                                       len(parts))
                         + source + b"".join(zygote.PART.pack(p) for p in parts))
        link.seq += 1
        status, timed_out, cpu, elapsed, out_total, out_len = zygote.REPLY.unpack(
            zygote.read_exact(link.ctl, zygote.REPLY.size))
        out = zygote.read_exact(link.ctl, out_len) if out_len else b""

        tags, recs, problem, setup_error = verdicts.parse(self.vmap, n, need)
        missing = n - len(tags)
        if missing:
            tags += b"R" * missing
            why = self._why_incomplete(_part_size(parts or (n,), n - missing), status, cpu, timed_out, problem,
                                       self._oom_killed(status), link.heavy)
            recs.extend([why] * missing)
        output = out.decode("utf-8", "replace")
        if out_total > len(out):
            output += f"\n[output truncated: {out_total} bytes written, first {len(out)} kept]"
        return tags.decode("ascii"), recs, output, elapsed, setup_error

    def _oom_killed(self, status: int) -> bool:
        """Whether the cgroup's OOM killer acted during the job (asked only of a killed job)."""
        if self.oom_fd is None or not os.WIFSIGNALED(status):
            return False
        try:
            n = oom_kills(self.oom_fd)
        except (OSError, ValueError):
            return False
        seen, self.oom_seen = self.oom_seen, n
        return n > seen

    def _why_incomplete(self, part_inputs: int, status: int, cpu: float, timed_out: int, problem: str | None,
                        oom: bool, third_party: bool = False):
        lim = self.limits
        if timed_out:
            return [C_TIMEOUT, None, f"job exceeded the {lim.timeout_s:g} s wall-clock limit"]
        if oom:
            return [C_MEMORY, None, f"job exceeded the {lim.memory_mb} MB memory limit "
                                    "(its processes and shared memory together)"]
        if problem and (not os.WIFSIGNALED(status) or problem.startswith("sandbox")):
            return [C_CRASHED, None, problem]
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            if sig == signal.SIGPROF:
                how = f"({lim.cpu_base_s:g} s + {lim.cpu_per_input_s:g} s per input"
                if third_party:
                    how += f", x{THIRD_PARTY_BUDGET_FACTOR:g} for code using third-party modules"
                how += ")"
                return [C_TIMEOUT, None, f"job exceeded its CPU-time budget of "
                                         f"{lim.cpu_budget_s(part_inputs, third_party):g} s {how}"]
            if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= lim.cpu_s):
                return [C_TIMEOUT, None, f"job exceeded the {lim.cpu_s} s CPU-time limit"]
            return [C_CRASHED, None, f"killed by {_signal_name(sig)}"]
        return [C_CRASHED, None, f"exited with code {os.waitstatus_to_exitcode(status)}"]
