"""Kernel-facing isolation, used from whichever process applies it: isolation (namespaces,
Landlock, mounts, prctl through syscalls), confine (a job's own confinement before its code
runs: cgroup, rlimits, no_new_privs, Landlock, uid), cgroups (the pool creates the job
cgroups, the supervisor reads their OOM kills) and scratch (per-worker tmpfs quotas and
removal of job files).
"""
