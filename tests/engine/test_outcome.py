"""How a run ends: exit codes and closing lines from its summary; storage failures told apart."""
import errno
import sqlite3

import pytest

from engine.client.errors import RequestFailed
from engine.config import Config
from engine.errors import RefusedError
from engine.outcome import (EXIT_INTERRUPTED, EXIT_LOST, EXIT_OK, closing_lines, error_reason, exit_code,
                            is_storage_failure, lost_items)

FUNNEL = {
    "responses": {"in": 10, "kept": 6, "out": 6,
                  "dropped": {"no_response_passed": 1, "error:http_5xx": 2, "error:connect": 1}},
    "responses.sample": {"in": 40, "kept": 20, "out": 20, "dropped": {"error:odd": 5}},   # a sub-item row
    "scoring": {"in": 6, "kept": 6, "out": 6, "dropped": {}},
}


def test_error_reasons_are_a_small_set():
    exc = RequestFailed("gave up: http_5xx: 503 Service Unavailable [http://a:1]", kind="http_5xx")
    assert error_reason(exc) == "error:http_5xx"                 # the kind, not the message
    assert error_reason(KeyError("x")) == "error:KeyError"


def test_lost_items_exit_3_and_say_where_and_what_to_do():
    assert lost_items(FUNNEL) == {"responses": {"error:http_5xx": 2, "error:connect": 1}}
    summary = {"stopped": "completed", "funnel": FUNNEL}
    assert exit_code(summary) == EXIT_LOST
    first, second = closing_lines(summary)
    assert first.startswith("autoif run: 3 item(s) lost to errors (responses: 2 http_5xx, 1 connect)")
    assert "run the same command again to retry exactly those" in second


def test_clean_and_interrupted_runs():
    clean = {"stopped": "completed", "funnel": {"scoring": FUNNEL["scoring"]}}
    assert exit_code(clean) == EXIT_OK and closing_lines(clean) == []
    drained = {**clean, "stopped": "drained"}
    assert exit_code(drained) == EXIT_INTERRUPTED and "resume" in closing_lines(drained)[-1]


def test_storage_failures():
    assert is_storage_failure(OSError(errno.ENOSPC, "No space left on device"))
    assert is_storage_failure(sqlite3.OperationalError("database or disk is full"))
    assert not is_storage_failure(OSError(errno.ECONNREFUSED, "refused"))
    assert not is_storage_failure(ValueError("disk is full"))


async def test_parquet_without_pyarrow_is_refused_before_any_work(tmp_path, monkeypatch):
    import engine.job as job
    import engine.run.inputs as inputs
    monkeypatch.setattr(inputs, "pyarrow_available", lambda: False)
    with pytest.raises(RefusedError, match="--no-parquet"):
        await job.run_job(Config.from_flat(output_dir=str(tmp_path / "run"), servers=["http://127.0.0.1:9"]))
    assert not (tmp_path / "run").exists()
