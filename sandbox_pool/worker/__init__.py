"""Runs in the worker's process tree, away from the engine: entry (the process the pool
starts, which enters the namespaces and re-executes itself as the supervisor), supervisor
(talks to the pool, keeps deadlines, reads verdicts), zygote (pre-imported image every job
is forked from), runner and verdicts (inside the job: run the verifier, record its verdicts).

Kept free of imports: the supervisor registers the package bare, and whatever is imported
here would be copied into every job's fork.
"""
