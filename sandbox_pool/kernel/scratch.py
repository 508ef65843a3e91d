"""Removing a job's scratch directory whatever the job left in it.

Scratch content is written by verifier code, so its removal must not depend on its
shape: shutil.rmtree recurses once per level (a deep tree raises RecursionError) and
follows paths (a deep tree exceeds PATH_MAX). Where the worker has its own scratch
tmpfs, a dirty scratch is simply replaced by a fresh mount (worker/zygote.py); this module
is the fallback and the pool's own final sweep. It works relative to directory fds
and hoists every subdirectory up to the top before removing it, so it needs no
recursion, a fixed number of open fds, and never follows a symlink.
"""

from __future__ import annotations

import errno
import os

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _clean(dir_fd: int) -> list[str]:
    """Unlink the files in dir_fd; return the names of its subdirectories."""
    try:
        os.fchmod(dir_fd, 0o700)  # a job may have removed its own write permission
    except OSError:
        pass
    subdirs = []
    try:
        with os.scandir(dir_fd) as it:
            entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
    except OSError:
        return subdirs
    for name, is_dir in entries:
        if is_dir:
            subdirs.append(name)
        else:
            try:
                os.unlink(name, dir_fd=dir_fd)
            except OSError:
                pass
    return subdirs


def remove_tree(path: str) -> bool:
    """Remove `path` and everything beneath it; True when it is gone.

    Depth-first with one directory fd open at a time (it climbs back through ".."; no job
    process is alive to move directories meanwhile), so depth costs memory for the names
    only, and each directory is listed once.
    """
    try:
        os.rmdir(path)  # the common case: the job wrote nothing
        return True
    except OSError as e:
        if e.errno == errno.ENOENT:
            return True
        if e.errno == errno.ENOTDIR:
            try:
                os.unlink(path)
                return True
            except OSError:
                return False
    try:
        fd = os.open(path, _DIR_FLAGS)
    except OSError:
        return False
    above: list[tuple[list[str], str]] = []  # per level: its parent's pending subdirs, its name
    try:
        pending = _clean(fd)
        while True:
            if pending:
                name = pending.pop()
                try:
                    child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError:
                    continue
                above.append((pending, name))
                os.close(fd)
                fd = child
                pending = _clean(fd)
                continue
            if not above:
                break
            parent = os.open("..", _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = parent
            pending, name = above.pop()
            try:
                os.rmdir(name, dir_fd=fd)
            except OSError:
                pass
    except OSError:
        pass
    finally:
        os.close(fd)
    try:
        os.rmdir(path)
    except OSError:
        return not os.path.lexists(path)
    return True


def is_mount_point(path: str) -> bool:
    try:
        return os.lstat(path).st_dev != os.lstat(os.path.dirname(path)).st_dev
    except OSError:
        return False
