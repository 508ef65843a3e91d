"""Reading user-supplied JSONL (or plain-text) files: one text per line, a one-line error per bad line."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import orjson


def read_texts(path: Path, extract: Callable[[Any], str | None], missing: str,
               on_error: Callable[[str], None] | None = None) -> Iterator[str]:
    """The text `extract` finds in each non-blank line's JSON value.

    A line that is not JSON, or where `extract` finds nothing (`missing` says what was
    expected), raises ValueError("FILE:LINE: why"), unless `on_error` takes that message and
    reading goes on with the next line. A `.txt` file holds plain text, one text a line (as the
    AutoIF reference release's seed_instruction.txt does).
    """
    if Path(path).suffix == ".txt":
        with open(path, encoding="utf-8") as fh:
            yield from (line.strip() for line in fh if line.strip())
        return
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                text = extract(orjson.loads(line))
                if not isinstance(text, str) or not text.strip():
                    raise ValueError(missing)
            except ValueError as exc:
                message = f"{path}:{lineno}: {exc}"
                if on_error is None:
                    raise ValueError(message) from None
                on_error(message)
                continue
            yield text.strip()
