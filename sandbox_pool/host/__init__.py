"""Runs in the engine's own process, on its event loop: the SandboxPool facade, the
scheduler (queueing and merging of jobs), each worker's socket, the worker processes'
lifecycle and watchdog, the wire protocol's checks of what workers send, and precheck.

Nothing here runs verifier code; everything a worker sends is treated as untrusted data.
"""
