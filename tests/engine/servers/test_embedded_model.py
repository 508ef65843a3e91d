"""The embedded model's provenance checks: pinned size and sha256, GGUF metadata, and the
warning when llama-server falls back to its built-in ChatML template (no model needed)."""
import hashlib
from dataclasses import replace

import pytest

from engine.servers.embedded_model import QWEN_CODER_05B, ModelError, assemble, check_metadata
from engine.servers.llamacpp import CHATML_FALLBACK, template_fallback


def chunks(tmp_path, *blobs):
    paths = []
    for i, blob in enumerate(blobs):
        paths.append(tmp_path / f"part{i}.bin")
        paths[-1].write_bytes(blob)
    return paths


def test_a_join_with_another_hash_is_refused_in_one_line(tmp_path):
    parts = chunks(tmp_path, b"GGUF" + b"\0" * 60, b"tampered")
    pinned = replace(QWEN_CODER_05B, size=72, sha256=hashlib.sha256(b"something else").hexdigest())
    with pytest.raises(ModelError) as err:
        assemble(pinned, tmp_path / "cache", parts=parts)
    msg = str(err.value)
    assert "\n" not in msg and "refusing" in msg and "72 bytes" in msg
    assert not list((tmp_path / "cache").iterdir())           # nothing half-written left behind


def test_right_hash_but_not_a_gguf_is_refused(tmp_path):
    blob = b"not a model at all"
    pinned = replace(QWEN_CODER_05B, size=len(blob), sha256=hashlib.sha256(blob).hexdigest())
    with pytest.raises(ModelError, match="not a readable GGUF"):
        assemble(pinned, tmp_path / "cache", parts=chunks(tmp_path, blob[:5], blob[5:]))


@pytest.mark.parametrize("meta, fault", [
    ({"general.architecture": "gemma3", "general.finetune": "Instruct", "tokenizer.chat_template": "x"},
     "architecture 'gemma3'"),
    ({"general.architecture": "qwen2", "tokenizer.chat_template": "x"}, "not an instruct model"),
    ({"general.architecture": "qwen2", "general.finetune": "Instruct-AWQ"}, "no tokenizer.chat_template"),
])
def test_metadata_of_a_base_or_foreign_model_is_refused(meta, fault):
    with pytest.raises(ModelError, match=fault):
        check_metadata(QWEN_CODER_05B, meta)


def test_metadata_of_the_pinned_model_passes():
    check_metadata(QWEN_CODER_05B, {"general.architecture": "qwen2", "general.finetune": "Instruct-AWQ",
                                    "tokenizer.chat_template": "{%- if tools %}..."})


def test_chat_template_fallback_is_recognised():
    assert template_fallback({"chat_template": CHATML_FALLBACK})
    assert template_fallback({"chat_template": ""})
    assert not template_fallback({"chat_template": "{%- if tools %}{{- '<|im_start|>system' }}{%- endif %}"})


def test_a_dead_assemblys_half_written_file_is_removed(tmp_path):
    blob = b"not a model at all"
    pinned = replace(QWEN_CODER_05B, size=len(blob), sha256=hashlib.sha256(blob).hexdigest())
    cache = tmp_path / "cache"
    cache.mkdir()
    dead = cache / f"{pinned.name}.gguf.999999999.tmp"       # no such pid
    dead.write_bytes(b"partial")
    with pytest.raises(ModelError):
        assemble(pinned, cache, parts=chunks(tmp_path, blob))
    assert not dead.exists() and not list(cache.iterdir())
