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
    assert (cfg.run.model, cfg.verifiers.k, cfg.crossval.case_agreement, cfg.responses.k, cfg.export.formats) == \
        ("qwen", 4, 0.6, 3, ["trl"])
    assert cfg.scoring.min == Config().scoring.min


def test_section_short_key(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[verifiers]\nverifier_k = 5\n[pool]\nworkers = 3\n")
    cfg = load_config(path)
    assert cfg.verifiers.k == 5 and cfg.pool.workers == 3


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
    assert (cfg.verifiers.k, cfg.scoring.enabled, cfg.run.model, cfg.responses.pass_threshold) == (2, False, "m", 0.75)
    assert cfg.run.servers == ["http://a:1", "http://b:2"]


def test_flags_not_given_do_not_override():
    cfg = apply_overrides(Config.from_flat(verifier_k=3), _parser().parse_args([]))
    assert cfg.verifiers.k == 3


def test_cli_range_error_names_flag():
    with pytest.raises(ConfigError, match="--case-agreement: must be <= 1"):
        apply_overrides(Config(), _parser().parse_args(["--case-agreement", "2"]))


def test_hash_stable_and_ignores_volatile_fields():
    a, b = Config(), Config()
    assert a.config_hash() == b.config_hash()
    b = b.replace_flat(output_dir="elsewhere", servers=["http://x:1"], stage_concurrency=3)
    assert a.config_hash() == b.config_hash()
    b = b.replace_flat(verifier_k=2)
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
    from engine.run import make_client

    args = _parser().parse_args(["--model-path", "Qwen/Qwen2.5-7B-Instruct", "--api-key", "sk-1"])
    cfg = config_from_args(args)
    assert cfg.run.model == "Qwen/Qwen2.5-7B-Instruct" and cfg.run.api_key == "sk-1"
    assert "sk-1" not in cfg.dump() and cfg.public_dict()["api_key"] == "***"
    assert cfg.run.api_key not in orjson.dumps(cfg.public_dict()).decode()
    assert make_client(cfg, ["http://127.0.0.1:9"], "openai")._headers["Authorization"] == "Bearer sk-1"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    assert make_client(Config(), ["http://127.0.0.1:9"], "openai")._headers["Authorization"] == "Bearer sk-env"
    # one way to give servers: --server, repeated (or A,B)
    assert config_from_args(_parser().parse_args(["--server", "http://a:1", "--server", "http://b:2,http://c:3"])
                            ).run.servers == ["http://a:1", "http://b:2", "http://c:3"]
    with pytest.raises(SystemExit):
        _parser().parse_args(["--servers", "http://a:1"])
    capsys.readouterr()
    run_help = build_parser()._subparsers._group_actions[0].choices["run"].format_help()
    assert "{auto,sglang,openai}" in run_help and "one of: alpaca, sharegpt, trl" in run_help
    assert "(default: 8)" in run_help and "exit status: 0 completed" in run_help
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.startswith("autoif ")


def test_hash_matches_older_run_directories():
    # the hashes run directories written by the flat Config carry: a resumed run must match them
    assert Config().config_hash() == "5d52df4c4de4"
    cfg = Config.from_flat(verifier_k=4, case_agreement=0.6, export_formats=["trl"], scoring=False, model="m",
                           servers=["http://x:1"], pool_workers=3, grpo_band_low=0.2, grpo_band_high=0.9)
    assert cfg.config_hash() == "33a5503da242"


def test_sections_and_flat_view_agree():
    cfg = Config.from_flat(verifier_k=4, pool_workers=3, export_formats=["trl"], scoring=False)
    assert (cfg.verifiers.k, cfg.pool.workers, cfg.export.formats, cfg.scoring.enabled) == (4, 3, ["trl"], False)
    assert Config.from_flat(cfg.flat()) == cfg and cfg.replace_flat(verifier_k=5).verifiers.k == 5
    assert cfg.verifiers.k == 4                      # replace_flat leaves the original as it was
    with pytest.raises(TypeError, match="verifer_k"):
        Config.from_flat(verifer_k=3)


@pytest.mark.parametrize("low, high", [(0.8, 0.2), (0.5, 0.5)])
def test_grpo_band_must_not_be_empty(tmp_path, low, high):
    args = _parser().parse_args(["--grpo-band-low", str(low), "--grpo-band-high", str(high)])
    with pytest.raises(ConfigError, match="--grpo-band-low .* must be less than --grpo-band-high"):
        config_from_args(args)
    path = tmp_path / "c.toml"
    path.write_text(f"[export]\ngrpo_band_low = {low}\ngrpo_band_high = {high}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and "--grpo-band-high" in str(info.value)
    assert config_from_args(_parser().parse_args(["--grpo-band-low", "0.2", "--grpo-band-high", "0.8"])
                            ).export.grpo_band_low == 0.2
