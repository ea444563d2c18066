"""Tokenizers and counting. ``CORPUS`` is the varied text every tokenizer test runs on."""

from __future__ import annotations

import random

_PROSE = (
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs! "
    "It's 3:45pm on 2024-06-01; we've shipped v1.2.3 (see https://example.com/a?b=c&d=e#f)."
)
_CODE = '''def fib(n: int) -> int:
    """Return the n-th Fibonacci number."""
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


if __name__ == "__main__":
\tprint({k: fib(k) for k in range(10)})  # {0: 0, 1: 1, ...}
'''


def _long_text() -> str:
    rng = random.Random(4)
    pieces = [_PROSE, _CODE, "数据", "مرحبا", "🙂", "  ", "\n", "\t", "1234567", "naïve café", "<|endoftext|>"]
    return "".join(rng.choice(pieces) + rng.choice([" ", "", "\n"]) for _ in range(4000))


CORPUS: list[str] = [
    "",
    "a",
    " ",
    "tiktoken is great!",
    _PROSE,
    _CODE,
    "SELECT id, name FROM users WHERE created_at > NOW() - INTERVAL '1 day' ORDER BY id DESC;",
    '{"role": "user", "content": [{"type": "text", "text": "hi"}], "n": 1.5e-3, "ok": true}',
    "emoji: 🙂😂🎉 family 👨‍👩‍👧‍👦 flag 🇫🇷 skin 👍🏽 keycap 1️⃣",
    "中文：今天天气很好，我们去公园散步吧。",  # noqa: RUF001 (full-width punctuation is the point)
    "日本語: お誕生日おめでとう、東京タワーへ行きましょう。",
    "한국어: 안녕하세요, 만나서 반갑습니다.",
    "العربية: مرحبا بالعالم، كيف حالك اليوم؟",
    "עברית: שלום עולם, מה שלומך?",
    "mixed RTL: The word شكرا means thanks; \u200f(RLM) and \u202eoverride\u202c marks.",
    "Ελληνικά, Русский текст, हिन्दी पाठ, ภาษาไทย",
    "combining: e\u0301 vs \u00e9, zero-width:\u200b\u200d|, nbsp:\u00a0|, bom:\ufeff",
    "     leading spaces and trailing spaces     ",
    "tabs\t\t\tand\nnewlines\n\n\n\nand\r\nCRLF\r\n\r\n",
    " \n \n\t \u3000 \n",
    "a" * 5000,
    "1234567890" * 50,
    "special markup is plain text: <|endoftext|> <|im_start|>user <start_of_turn>model",
    "lone surrogate \ud83d in text",
    _long_text(),
]
