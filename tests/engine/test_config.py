"""Config: TOML (flat and sectioned), CLI overrides, one-line errors, stable hash, dump round trip."""
import argparse

import orjson
import pytest

from engine.config import (Config, ConfigError, add_config_arguments, apply_overrides, config_from_args,
                           config_from_mapping, load_config)


def _parser():
    p = argparse.ArgumentParser()
    add_config_arguments(p)
    return p


def test_flat_and_sectioned_keys(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('model = "qwen"\nverifier_k = 4\n[crossval]\ncase_agreement = 0.6\n'
                    '[responses]\nresponses_k = 3\n[export]\nexport_formats = ["trl"]\n')
    cfg = load_config(path)
    assert (cfg.model, cfg.verifier_k, cfg.case_agreement, cfg.responses_k, cfg.export_formats) == \
        ("qwen", 4, 0.6, 3, ["trl"])
    assert cfg.score_min == Config().score_min


def test_section_short_key(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[verifiers]\nverifier_k = 5\n[pool]\nworkers = 3\n")
    cfg = load_config(path)
    assert cfg.verifier_k == 5 and cfg.pool_workers == 3


@pytest.mark.parametrize("body, key", [
    ("verifier_k = \"eight\"\n", "verifier_k"),
    ("case_agreement = 1.5\n", "case_agreement"),
    ("scoring = 1\n", "scoring"),
    ("export_formats = [\"csv\"]\n", "export_formats"),
    ("[crossval]\ncase_agreement = \"x\"\n", "crossval.case_agreement"),
])
def test_bad_value_names_file_and_key(tmp_path, body, key):
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and f"'{key}'" in message


def test_unknown_key_and_invalid_toml(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("verifer_k = 3\n")
    with pytest.raises(ConfigError, match=r"c\.toml: unknown key 'verifer_k'"):
        load_config(path)
    path.write_text("verifier_k = = 3\n")
    with pytest.raises(ConfigError, match=r"c\.toml: invalid TOML"):
        load_config(path)
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.toml")


def test_cli_overrides_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("verifier_k = 4\nscoring = true\nmodel = \"m\"\n")
    args = _parser().parse_args(["--config", str(path), "--verifier-k", "2", "--no-scoring",
                                 "--server", "http://a:1", "--server", "http://b:2", "--pass-threshold", "0.75"])
    cfg = config_from_args(args)
    assert (cfg.verifier_k, cfg.scoring, cfg.model, cfg.pass_threshold) == (2, False, "m", 0.75)
    assert cfg.servers == ["http://a:1", "http://b:2"]


def test_flags_not_given_do_not_override():
    cfg = apply_overrides(Config(verifier_k=3), _parser().parse_args([]))
    assert cfg.verifier_k == 3


def test_cli_range_error_names_flag():
    with pytest.raises(ConfigError, match="--case-agreement: must be <= 1"):
        apply_overrides(Config(), _parser().parse_args(["--case-agreement", "2"]))


def test_hash_stable_and_ignores_volatile_fields():
    a, b = Config(), Config()
    assert a.config_hash() == b.config_hash()
    b.output_dir, b.servers, b.stage_concurrency = "elsewhere", ["http://x:1"], 3
    assert a.config_hash() == b.config_hash()
    b.verifier_k = 2
    assert a.config_hash() != b.config_hash()


def test_dump_round_trips(tmp_path):
    cfg = config_from_mapping({"model": "m \"q\"", "verifier_k": 3, "export_formats": ["alpaca"], "scoring": False})
    text = cfg.dump()
    assert cfg.config_hash() in text and "[crossval]" in text
    path = tmp_path / "dump.toml"
    path.write_text(text)
    assert load_config(path) == cfg


def test_cli_aliases_secrets_and_help(monkeypatch, capsys):
    from engine.cli import build_parser, main
    from engine.job import make_client

    args = _parser().parse_args(["--model-path", "Qwen/Qwen2.5-7B-Instruct", "--api-key", "sk-1"])
    cfg = config_from_args(args)
    assert cfg.model == "Qwen/Qwen2.5-7B-Instruct" and cfg.api_key == "sk-1"
    assert "sk-1" not in cfg.dump() and cfg.public_dict()["api_key"] == "***"
    assert cfg.api_key not in orjson.dumps(cfg.public_dict()).decode()
    assert make_client(cfg, ["http://127.0.0.1:9"], "openai")._headers["Authorization"] == "Bearer sk-1"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    assert make_client(Config(), ["http://127.0.0.1:9"], "openai")._headers["Authorization"] == "Bearer sk-env"
    # one way to give servers: --server, repeated (or A,B)
    assert config_from_args(_parser().parse_args(["--server", "http://a:1", "--server", "http://b:2,http://c:3"])
                            ).servers == ["http://a:1", "http://b:2", "http://c:3"]
    with pytest.raises(SystemExit):
        _parser().parse_args(["--servers", "http://a:1"])
    capsys.readouterr()
    run_help = build_parser()._subparsers._group_actions[0].choices["run"].format_help()
    assert "{auto,sglang,openai}" in run_help and "one of: alpaca, sharegpt, trl" in run_help
    assert "(default: 8)" in run_help and "exit status: 0 completed" in run_help
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.startswith("autoif ")
