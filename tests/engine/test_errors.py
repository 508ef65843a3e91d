"""One exception root: every error the engine raises on purpose is an AutoIFError, typed by kind."""
import pytest

import engine.client
import engine.config
import engine.job
import engine.prompting
import engine.reference
import engine.report.html
import engine.servers.manager
from engine import errors
from engine.cli import main


def test_every_engine_error_has_one_root_and_keeps_its_builtin_base():
    for cls, builtin in ((errors.ConfigError, ValueError), (errors.InputError, ValueError),
                         (errors.PromptError, KeyError), (errors.JobError, RuntimeError),
                         (errors.ReportError, RuntimeError), (errors.ServerError, RuntimeError),
                         (errors.ServerStartError, RuntimeError), (errors.RequestFailed, Exception)):
        assert issubclass(cls, errors.AutoIFError) and issubclass(cls, builtin), cls
    # importable from where they are raised, as the same class
    assert engine.config.ConfigError is errors.ConfigError
    assert engine.job.JobError is errors.JobError
    assert engine.report.html.ReportError is errors.ReportError
    assert engine.prompting.PromptError is errors.PromptError
    assert engine.servers.manager.ServerStartError is errors.ServerStartError
    assert engine.client.RequestFailed is errors.RequestFailed
    assert issubclass(engine.reference.BadRecord, errors.InputError)


def test_request_failures_are_typed_by_kind():
    kinds = {"connect": errors.ConnectFailed, "timeout": errors.RequestTimeout,
             "disconnect": errors.Disconnected, "http_429": errors.RateLimited,
             "http_5xx": errors.ServerFault, "http_4xx": errors.BadRequest,
             "stream_error": errors.StreamBroke, "protocol": errors.ProtocolFailed}
    for kind, cls in kinds.items():
        exc = errors.RequestFailed.of(kind, f"gave up:  {kind}\n[http://h]", status=503, attempts=3, server="h")
        assert type(exc) is cls and exc.kind == kind and isinstance(exc, errors.LLMError)
        assert (str(exc), exc.status, exc.attempts, exc.server) == (f"gave up: {kind} [http://h]", 503, 3, "h")
    other = errors.RequestFailed.of("no_server", "none left")
    assert type(other) is errors.RequestFailed and other.kind == "no_server"
    assert errors.BadRequest("bad request: n < 1").kind == "http_4xx"
    with pytest.raises(errors.LLMError):
        raise errors.RequestTimeout("timed out")


def test_a_config_error_still_ends_a_command_in_one_line(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("responses_k = 0\n")
    assert main(["run", "--config", str(cfg), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "responses_k" in err
