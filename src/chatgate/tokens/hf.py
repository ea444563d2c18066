"""A Hugging Face ``tokenizers`` tokenizer read from a ``tokenizer.json`` (vLLM-served Qwen, Llama, ...).

The file is the one shipped with the model's weights; nothing is downloaded. Truncation and padding
that the file may configure are switched off (a count must be the whole text's), and no special
tokens are added (BOS and the chat template's tokens are message overheads, not text).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer as _HFTokenizer


class HFTokenizer:
    def __init__(self, path: str | Path) -> None:
        path = Path(path).expanduser()
        self._tok = _HFTokenizer.from_file(str(path))
        self._tok.no_truncation()
        self._tok.no_padding()
        self.name = f"hf:{path}"
        self.path = path

    def encode(self, text: str) -> list[int]:
        try:
            return list(self._tok.encode(text, add_special_tokens=False).ids)
        except TypeError:  # lone surrogates (JSON allows them) are not text to the library
            return list(self._tok.encode(_scrub(text), add_special_tokens=False).ids)

    def count(self, text: str) -> int:
        return len(self.encode(text))

    def count_batch(self, texts: Sequence[str]) -> list[int]:
        """One call into the library's batch encoder (parallel in Rust, offsets not computed)."""
        if not texts:
            return []
        try:
            encodings = self._tok.encode_batch_fast(list(texts), add_special_tokens=False)
        except TypeError:
            encodings = self._tok.encode_batch_fast([_scrub(t) for t in texts], add_special_tokens=False)
        return [len(enc.ids) for enc in encodings]


def _scrub(text: str) -> str:
    """Lone surrogates become U+FFFD."""
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
