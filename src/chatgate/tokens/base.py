"""The tokenizer interface, and the word-count estimate used when no tokenizer is configured."""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from typing import Protocol, runtime_checkable


@runtime_checkable
class Tokenizer(Protocol):
    """Turns text into a model's token ids.

    ``name`` identifies the vocabulary (``tiktoken:cl100k_base``, ``hf:/path/tokenizer.json``,
    ``gguf:gemma-3-270m``, ``words``); counts are cached under it. ``encode`` and ``count`` see
    special-token markup (``<|endoftext|>``, ``<start_of_turn>``) in the text as plain text, as an
    OpenAI-compatible server does with a user's message, and add no BOS/EOS: a chat template's
    tokens are the message overheads of :class:`~chatgate.tokens.counter.TokenCounter`.
    """

    name: str

    def encode(self, text: str) -> list[int]: ...

    def count(self, text: str) -> int: ...

    def count_batch(self, texts: Sequence[str]) -> list[int]: ...


class WordTokenizer:
    """An estimate, not a tokenizer: ``ceil(words * tokens_per_word)`` tokens, words split on whitespace.

    English prose averages about 1.3 cl100k tokens per word; code, numbers and most non-Latin
    scripts run higher (CJK text without spaces is one "word" per run), so this is used only when
    nothing better is configured. ``encode`` returns ``count`` placeholder ids, each the CRC32 of
    the word it stands for: only the length means anything.
    """

    def __init__(self, tokens_per_word: float = 1.3) -> None:
        if tokens_per_word <= 0:
            raise ValueError("tokens_per_word must be positive")
        self.name = "words"
        self.tokens_per_word = tokens_per_word

    def count(self, text: str) -> int:
        return math.ceil(len(text.split()) * self.tokens_per_word)

    def count_batch(self, texts: Sequence[str]) -> list[int]:
        return [self.count(text) for text in texts]

    def encode(self, text: str) -> list[int]:
        words = text.split()
        n = math.ceil(len(words) * self.tokens_per_word)
        ids = [zlib.crc32(word.encode("utf-8", "surrogatepass")) for word in words]
        return [ids[min(int(i / self.tokens_per_word), len(ids) - 1)] for i in range(n)]
