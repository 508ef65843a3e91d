"""Thin ctypes wrappers around the Linux kernel interfaces the sandbox relies on.

Python 3.11 has no os.unshare, no prctl and no Landlock bindings, so they are
called through libc here. Every function either does what it says or raises
OSError; callers decide whether a failure degrades or aborts.
"""

from __future__ import annotations

import ctypes
import os
import struct

# dlopen(NULL): libc's symbols are already in the process. (ctypes.util.find_library would
# run a subprocess, and in a process that just unshared CLONE_NEWPID that first child would
# become -- and, exiting, use up -- the namespace's PID 1.)
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.prctl.restype = ctypes.c_int
_libc.unshare.argtypes = [ctypes.c_int]
_libc.unshare.restype = ctypes.c_int
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.setns.restype = ctypes.c_int
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.mount.restype = ctypes.c_int
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.umount2.restype = ctypes.c_int
for _name in ("shmctl", "msgctl"):
    getattr(_libc, _name).argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    getattr(_libc, _name).restype = ctypes.c_int
_libc.semctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
_libc.semctl.restype = ctypes.c_int

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
CLONE_NEWPID = 0x20000000
CLONE_NEWIPC = 0x08000000
MNT_DETACH = 2
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REC = 1 << 14
MS_PRIVATE = 1 << 18

PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36
PR_SET_MM = 35
PR_SET_MM_ENV_START = 10
PR_SET_MM_ENV_END = 11

# Landlock syscalls share these numbers on every architecture (added after the table unification).
_SYS_LANDLOCK_CREATE_RULESET = 444
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1

FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REMOVE_DIR = 1 << 4
FS_REMOVE_FILE = 1 << 5
FS_MAKE_CHAR = 1 << 6
FS_MAKE_DIR = 1 << 7
FS_MAKE_REG = 1 << 8
FS_MAKE_SOCK = 1 << 9
FS_MAKE_FIFO = 1 << 10
FS_MAKE_BLOCK = 1 << 11
FS_MAKE_SYM = 1 << 12
FS_REFER = 1 << 13  # ABI 2
FS_TRUNCATE = 1 << 14  # ABI 3
FS_IOCTL_DEV = 1 << 15  # ABI 5
NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1  # ABI 6

# Rights that make sense on a regular file; the kernel rejects directory-only rights on files.
_FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
FS_READ_RIGHTS = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR


def _check(ret: int) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


# PyDLL keeps the GIL held across the call, so the child resumes as a consistent copy of a
# single-threaded interpreter.
_py_libc = ctypes.PyDLL(None, use_errno=True)
_py_libc.fork.restype = ctypes.c_int
_py_libc.fork.argtypes = []


def fork_bare() -> int:
    """fork() without CPython's at-fork machinery; only for single-threaded callers.

    os.fork() runs every registered at-fork hook in the child (threading's bookkeeping,
    random's reseed, logging's lock reinit...), which executes Python code that dirties
    hundreds of copy-on-write pages, a cost every job would pay. A job process
    needs none of it; the caller reseeds `random` itself.
    """
    pid = _py_libc.fork()
    if pid < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return pid


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags))


def new_pid_namespace_for_children() -> None:
    """Make this process' next child PID 1 of a new PID namespace, also after an earlier one.

    unshare(CLONE_NEWPID) only changes where children go, and only while that is still the
    caller's own namespace; rejoining our own first (setns) allows a second, separate one.
    """
    fd = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.setns(fd, CLONE_NEWPID))
    finally:
        os.close(fd)
    unshare(CLONE_NEWPID)


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = (lambda v: None if v is None else v.encode())
    _check(_libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)))


def mount_private_tmpfs(target: str, size_mb: int, max_files: int) -> None:
    """In a fresh mount namespace: stop mount propagation, then put a size-capped tmpfs on target."""
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("sandbox-scratch", target, "tmpfs", MS_NOSUID | MS_NODEV,
          f"size={size_mb}m,nr_inodes={max_files},mode=0711")


def remount_private_tmpfs(target: str, size_mb: int, max_files: int) -> None:
    """Replace the tmpfs on target with a fresh, empty one (whatever the old one held)."""
    _check(_libc.umount2(target.encode(), MNT_DETACH))
    mount("sandbox-scratch", target, "tmpfs", MS_NOSUID | MS_NODEV,
          f"size={size_mb}m,nr_inodes={max_files},mode=0711")


# SysV IPC: (ctl function, *_INFO command, offset of the in-use count in the info struct,
# *_STAT command). The counts are shm_info.used_ids, msginfo.msgpool and seminfo.semusz.
_IPC_RMID = 0
_SYSV = (("shmctl", 14, 0, 13), ("msgctl", 12, 0, 11), ("semctl", 19, 28, 18))
_IPC_BUF = ctypes.create_string_buffer(512)  # large enough for every *_info / *id_ds struct


def _sysv_call(fn: str, ident: int, cmd: int, buf) -> int:
    if fn == "semctl":
        return _libc.semctl(ident, 0, cmd, buf)
    return getattr(_libc, fn)(ident, cmd, buf)


def sweep_sysv_ipc() -> int:
    """Remove every SysV shared-memory segment, message queue and semaphore set in this
    process' IPC namespace; returns how many were removed.

    Costs three syscalls when there is nothing to remove (the usual case). Only for a
    namespace of the pool's own, once no job process is left in it.
    """
    buf = _IPC_BUF
    removed = 0
    for fn, info_cmd, count_at, stat_cmd in _SYSV:
        highest = _sysv_call(fn, 0, info_cmd, buf)
        if highest < 0 or struct.unpack_from("=i", buf.raw, count_at)[0] == 0:
            continue
        for index in range(highest + 1):
            ident = _sysv_call(fn, index, stat_cmd, buf)
            if ident >= 0 and _sysv_call(fn, ident, _IPC_RMID, None) == 0:
                removed += 1
    return removed


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(_libc.prctl(option, arg2, arg3, arg4, arg5))


def set_no_new_privs() -> None:
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def set_parent_death_signal(sig: int) -> None:
    prctl(PR_SET_PDEATHSIG, sig)


def set_child_subreaper() -> None:
    prctl(PR_SET_CHILD_SUBREAPER, 1)


def landlock_abi() -> int:
    """Landlock ABI version, or 0 when the kernel lacks or disables it."""
    try:
        return _check(_libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0),
                                    ctypes.c_uint32(_LANDLOCK_CREATE_RULESET_VERSION)))
    except OSError:
        return 0


def handled_fs_rights(abi: int) -> int:
    rights = (FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_READ_DIR | FS_REMOVE_DIR | FS_REMOVE_FILE
              | FS_MAKE_CHAR | FS_MAKE_DIR | FS_MAKE_REG | FS_MAKE_SOCK | FS_MAKE_FIFO | FS_MAKE_BLOCK
              | FS_MAKE_SYM)
    if abi >= 2:
        rights |= FS_REFER
    if abi >= 3:
        rights |= FS_TRUNCATE
    if abi >= 5:
        rights |= FS_IOCTL_DEV
    return rights


def create_ruleset(abi: int, *, restrict_net: bool, restrict_scope: bool) -> tuple[int, dict[str, bool]]:
    """Create a ruleset handling all fs rights (+ TCP and IPC scopes where the ABI allows).

    Returns (fd, {"landlock_net": bool, "landlock_scope": bool}) telling which extras are covered.
    """
    fs = handled_fs_rights(abi)
    net = NET_BIND_TCP | NET_CONNECT_TCP if (restrict_net and abi >= 4) else 0
    scope = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if (restrict_scope and abi >= 6) else 0
    # The attr struct grew with the ABI; pass only the size this kernel understands.
    if abi >= 6:
        attr = struct.pack("=QQQ", fs, net, scope)
    elif abi >= 4:
        attr = struct.pack("=QQ", fs, net)
    else:
        attr = struct.pack("=Q", fs)
    buf = ctypes.create_string_buffer(attr, len(attr))
    fd = _check(_libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, buf, ctypes.c_size_t(len(attr)), ctypes.c_uint32(0)))
    os.set_inheritable(fd, False)
    return fd, {"landlock_net": bool(net), "landlock_scope": bool(scope)}


def add_path_rule(ruleset_fd: int, path: str, rights: int, abi: int) -> None:
    """Allow `rights` beneath `path` (trimmed to file rights when path is a file)."""
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        if not os.path.isdir(path):
            rights &= _FILE_RIGHTS
        rights &= handled_fs_rights(abi)
        attr = struct.pack("=Qi", rights, fd)  # packed struct landlock_path_beneath_attr
        buf = ctypes.create_string_buffer(attr, len(attr))
        _check(_libc.syscall(_SYS_LANDLOCK_ADD_RULE, ctypes.c_int(ruleset_fd),
                             ctypes.c_int(_LANDLOCK_RULE_PATH_BENEATH), buf, ctypes.c_uint32(0)))
    finally:
        os.close(fd)


def restrict_self(ruleset_fd: int) -> None:
    _check(_libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_int(ruleset_fd), ctypes.c_uint32(0)))


def scrub_environment() -> bool:
    """Empty os.environ and wipe the original environment block that /proc/self/environ shows.

    Returns True when the in-memory block was wiped (or shrunk to nothing).
    """
    import posix

    os.environ.clear()  # also unsetenv()s every variable in libc's environ
    posix.environ.clear()
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        # comm (field 2) may contain spaces/parens: split after the last ')'.
        fields = stat[stat.rindex(b")") + 2:].split()
        env_start, env_end = int(fields[50 - 3]), int(fields[51 - 3])
    except (OSError, ValueError, IndexError):
        return False
    if env_end <= env_start:
        return True
    ctypes.memset(env_start, 0, env_end - env_start)
    # As root we can also shrink the block so /proc/self/environ reads as empty, not as NULs.
    try:
        prctl(PR_SET_MM, PR_SET_MM_ENV_END, env_start)
    except OSError:
        pass
    return True
