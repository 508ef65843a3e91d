"""Static screening of verifier code before it is ever sent to a worker.

A filter for honest mistakes (no evaluate(), syntax errors, imports a verifier should
not need), NOT a security layer: any AST filter is easy to get around (exec of a
string, getattr on builtins, a module's own reference to os...). Hostile code is held
by the sandbox's isolation layers, which assume it got past this filter. Results are
cached because the engine evaluates the same verifier against many responses.
"""

from __future__ import annotations

import ast
import functools
from typing import Iterable

from ..limits import DEFAULT_ALLOWED_MODULES
from ..outcome import one_line

MAX_CODE_CHARS = 200_000
_FORBIDDEN_NAMES = frozenset({"__import__", "importlib"})


def precheck(code: str, allowed_modules: Iterable[str] | None = None) -> str | None:
    """Return None when `code` may run, else a one-line reason for rejecting it."""
    allowed = DEFAULT_ALLOWED_MODULES if allowed_modules is None else frozenset(allowed_modules)
    return _precheck_cached(code, allowed)


@functools.lru_cache(maxsize=4096)
def _precheck_cached(code: str, allowed: frozenset[str]) -> str | None:
    if not isinstance(code, str):
        return f"code must be str, not {type(code).__name__}"
    if len(code) > MAX_CODE_CHARS:
        return f"code too long ({len(code)} > {MAX_CODE_CHARS} characters)"
    try:
        tree = ast.parse(code, "<verifier>", "exec")
    except SyntaxError as e:
        return one_line(f"SyntaxError: {e.msg} (line {e.lineno})")
    except (ValueError, RecursionError, MemoryError) as e:  # NUL bytes, absurd nesting
        return one_line(f"unparsable code: {type(e).__name__}: {e}")

    if not any(isinstance(n, ast.FunctionDef) and n.name == "evaluate" for n in tree.body):
        return "no top-level function evaluate(response) defined"

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".", 1)[0]
                if top not in allowed:
                    return f"import of module {alias.name!r} is not allowed"
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                return "relative imports are not allowed"
            top = (node.module or "").split(".", 1)[0]
            if top not in allowed:
                return f"import from module {node.module!r} is not allowed"
        elif isinstance(node, ast.Name) and node.id in _FORBIDDEN_NAMES and node.id not in allowed:
            return f"use of {node.id!r} is not allowed"
        elif isinstance(node, ast.Attribute) and node.attr == "__import__":
            return "use of '__import__' is not allowed"
    return None

