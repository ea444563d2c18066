"""The local model's own tokenizer, read from its GGUF by llama.cpp.

Only the vocabulary is loaded (``vocab_only=True``: no weights, no context): well under a second
for the bundled model, done on first use or by :meth:`LlamaVocabTokenizer.load`. The GGUF
path is given by the caller (``chatgate.upstream.local.model_file`` for the bundled model);
this module assembles nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import llama_cpp

log = logging.getLogger("chatgate.tokens")


class LlamaVocabTokenizer:
    """``Llama.tokenize(text, add_bos=False, special=False)``: special-token markup counts as plain text."""

    def __init__(self, model_path: str | Path, model_name: str | None = None) -> None:
        self.path = Path(model_path)
        self.name = f"gguf:{model_name or self.path.stem}"
        self.load_seconds: float | None = None
        self._llama: llama_cpp.Llama | None = None
        self._lock = threading.Lock()

    def load(self) -> llama_cpp.Llama:
        """Load the vocabulary now (idempotent, thread-safe); the first count otherwise does."""
        llama = self._llama
        if llama is not None:
            return llama
        with self._lock:
            if self._llama is None:
                if not self.path.is_file():
                    raise FileNotFoundError(f"local model not found: {self.path}")
                started = time.perf_counter()
                import llama_cpp

                from chatgate.upstream.local_output import ggml_to_logging

                ggml_to_logging()  # llama.cpp's lines as log records, not raw text on stderr
                self._llama = llama_cpp.Llama(model_path=str(self.path), vocab_only=True, verbose=False)
                self.load_seconds = time.perf_counter() - started
                log.info(
                    "local tokenizer loaded",
                    extra={"tokenizer": self.name, "path": str(self.path), "seconds": round(self.load_seconds, 3)},
                )
            return self._llama

    def encode(self, text: str) -> list[int]:
        if not text:
            return []
        llama = self.load()
        try:
            data = text.encode()
        except UnicodeEncodeError:  # lone surrogates (JSON allows them): counted as U+FFFD
            data = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace").encode()
        with self._lock:  # llama.cpp does not promise a thread-safe tokenizer
            return list(llama.tokenize(data, add_bos=False, special=False))

    def count(self, text: str) -> int:
        return len(self.encode(text))

    def count_batch(self, texts: Sequence[str]) -> list[int]:
        """llama.cpp has no batch tokenizer: one call per text."""
        return [len(self.encode(text)) for text in texts]
