"""Tokenizers and token counting: one ``Tokenizer`` interface, four implementations, one counting facade."""

from chatgate.tokens.base import Tokenizer, WordTokenizer
from chatgate.tokens.counter import TokenCounter, image_tokens_for_size
from chatgate.tokens.hf import HFTokenizer
from chatgate.tokens.local import LlamaVocabTokenizer
from chatgate.tokens.openai_bpe import TiktokenTokenizer

__all__ = [
    "HFTokenizer",
    "LlamaVocabTokenizer",
    "TiktokenTokenizer",
    "TokenCounter",
    "Tokenizer",
    "WordTokenizer",
    "image_tokens_for_size",
]
