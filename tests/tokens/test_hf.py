"""Hugging Face tokenizers: a tokenizer.json built here, loaded by path, selected per model."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from tokenizers import Tokenizer as HF
from tokenizers import models, pre_tokenizers, processors, trainers

from chatgate.settings import TokenSettings
from chatgate.tokens import HFTokenizer, TokenCounter, Tokenizer
from tests.tokens import CORPUS

TRAINING = [
    "the cat sat on the mat",
    "the dog sat on the log",
    "a tokenizer turns text into tokens, and tokens into ids",
    "chatgate counts tokens the way the model does",
] * 20


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, HF]:
    """A tiny byte-level BPE trained here; saved with a BOS post-processor and truncation at 8 tokens."""
    tok = HF(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TRAINING, trainer)
    reference = HF.from_str(tok.to_str())  # no BOS, no truncation
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tok.enable_truncation(max_length=8)
    path = tmp_path_factory.mktemp("hf") / "tokenizer.json"
    tok.save(str(path))
    return path, reference


def ref_ids(reference: HF, text: str) -> list[int]:
    text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")  # the library takes no lone surrogates
    return list(reference.encode(text, add_special_tokens=False).ids)


def test_loaded_tokenizer_matches_the_library(built):
    path, reference = built
    tok = HFTokenizer(path)
    assert isinstance(tok, Tokenizer) and tok.name == f"hf:{path}"
    for text in CORPUS:
        ids = ref_ids(reference, text)
        assert tok.encode(text) == ids
        assert tok.count(text) == len(ids)


def test_file_truncation_and_special_tokens_do_not_apply(built):
    path, _ = built
    text = "the cat sat on the mat and the dog sat on the log"
    assert len(HF.from_file(str(path)).encode(text).ids) == 8  # the file as saved: BOS + truncated
    tok = HFTokenizer(path)
    assert tok.count(text) > 8 and 0 not in tok.encode(text)


def test_batch_uses_the_library_and_equals_per_item(built):
    tok = HFTokenizer(built[0])
    assert tok.count_batch(CORPUS) == [tok.count(t) for t in CORPUS]
    assert tok.count_batch([]) == []


def test_configured_model_selects_its_tokenizer(built):
    path, reference = built
    counter = TokenCounter(TokenSettings(models={"tiny-llm": str(path)}))
    assert counter.tokenizer_for("tiny-llm").name == f"hf:{path}"
    assert counter.tokenizer_for("tiny-llm") is counter.tokenizer_for("tiny-llm")  # loaded once
    assert counter.tokenizer_for("other").name == "tiktoken:cl100k_base"
    assert counter.tokenizer_for(None).name == "tiktoken:cl100k_base"
    text = "tokens into ids"
    assert counter.count(text, "tiny-llm") == len(ref_ids(reference, text))
    assert counter.count(text) != counter.count(text, "tiny-llm")  # one cache, separate keys per tokenizer
    assert counter.count_batch(CORPUS, "tiny-llm") == [len(ref_ids(reference, t)) for t in CORPUS]
    messages = [{"role": "user", "content": text}]
    expected = 3 + len(ref_ids(reference, "user")) + len(ref_ids(reference, text)) + 3
    assert counter.count_messages(messages, "tiny-llm") == expected


def test_a_tokenizer_that_fails_to_load_is_logged_and_the_default_used(tmp_path, caplog):
    caplog.set_level(logging.ERROR, logger="chatgate.tokens")
    broken = tmp_path / "tokenizer.json"
    broken.write_text("{not json")
    counter = TokenCounter(TokenSettings(models={"a": str(broken), "b": str(tmp_path / "missing.json")}))
    assert counter.tokenizer_for("a").name == "tiktoken:cl100k_base"
    assert counter.tokenizer_for("a").name == "tiktoken:cl100k_base"
    assert counter.tokenizer_for("b").name == "tiktoken:cl100k_base"
    errors = [r for r in caplog.records if r.name == "chatgate.tokens" and r.levelno == logging.ERROR]
    assert len(errors) == 2  # once per path


def test_warm_up_loads_configured_tokenizers_now(built, monkeypatch):
    loaded: list[str] = []
    real = HFTokenizer.__init__

    def spy(self, path):
        loaded.append(str(path))
        real(self, path)

    monkeypatch.setattr(HFTokenizer, "__init__", spy)
    counter = TokenCounter(TokenSettings(models={"a": str(built[0]), "b": str(built[0])}))
    counter.warm_up()
    assert loaded == [str(built[0])]  # one load for one path
    counter.tokenizer_for("a")
    counter.tokenizer_for("b")
    assert loaded == [str(built[0])]
