"""Chunker: token bounds by the real counter, structure kept, overlap carried, and speed."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from chatgate.rag.chunking import Chunker
from chatgate.rag.loaders import parse
from chatgate.rag.types import Chunk, ParsedDocument, Section
from chatgate.settings import ChunkingSettings, TokenSettings
from chatgate.tokens import TokenCounter

SAMPLES = Path(__file__).resolve().parent / "samples"


@pytest.fixture(scope="module")
def counter() -> TokenCounter:
    return TokenCounter(TokenSettings())


def sentence(i: int) -> str:
    return f"Sentence number {i} talks about policy item {i * 7} and what it means for the team."


def paragraph(start: int, n: int) -> str:
    return " ".join(sentence(i) for i in range(start, start + n))


def doc_of(*sections: Section, title: str = "Doc") -> ParsedDocument:
    return ParsedDocument(title=title, sections=sections, format="md")


def check_bounds(chunks: list[Chunk], counter: TokenCounter, size: int) -> None:
    for i, c in enumerate(chunks):
        assert c.ordinal == i
        assert c.tokens == counter.count(c.text), c.text
        assert 0 < c.tokens <= size, (c.tokens, c.text)


def test_small_sections_stay_whole_and_apart(counter: TokenCounter) -> None:
    doc = doc_of(
        Section("Intro text.", ("Guide",)),
        Section("First part.\n\nSecond part.", ("Guide", "Setup"), page=2),
        title="The Guide",
    )
    chunks = Chunker(counter, size=200, overlap=40).chunk(doc)
    assert [c.text for c in chunks] == ["Intro text.", "First part.\n\nSecond part."]
    assert [c.headings for c in chunks] == [("Guide",), ("Guide", "Setup")]
    assert [c.page for c in chunks] == [None, 2]
    assert {c.title for c in chunks} == {"The Guide"}
    check_bounds(chunks, counter, 200)


def test_never_mixes_sections(counter: TokenCounter) -> None:
    sections = tuple(Section(paragraph(k * 100, 12), (f"H{k}",)) for k in range(4))
    chunks = Chunker(counter, size=120, overlap=30).chunk(doc_of(*sections))
    check_bounds(chunks, counter, 120)
    for c in chunks:
        k = int(c.headings[0][1:])
        # every sentence in the chunk belongs to its own section
        for i in range(400):
            if sentence(i) in c.text:
                assert i // 100 == k
    # each section's sentences all appear, in order, in its chunks
    for k in range(4):
        text = " ".join(c.text for c in chunks if c.headings == (f"H{k}",))
        positions = [text.find(sentence(i)) for i in range(k * 100, k * 100 + 12)]
        assert all(p >= 0 for p in positions)
        assert positions == sorted(positions)


def test_paragraphs_are_not_split_when_they_fit_a_chunk(counter: TokenCounter) -> None:
    paras = [paragraph(i * 10, 4) for i in range(6)]  # ~80 tokens each
    size = 200
    chunks = Chunker(counter, size=size, overlap=0).chunk(doc_of(Section("\n\n".join(paras))))
    check_bounds(chunks, counter, size)
    for c in chunks:
        for part in c.text.split("\n\n"):
            assert part in paras  # only whole paragraphs
    assert [p for c in chunks for p in c.text.split("\n\n")] == paras


def test_long_paragraphs_split_between_sentences_with_overlap(counter: TokenCounter) -> None:
    text = paragraph(0, 60)  # one paragraph of ~1200 tokens
    size, overlap = 150, 40
    chunks = Chunker(counter, size=size, overlap=overlap).chunk(doc_of(Section(text, ("Big",))))
    check_bounds(chunks, counter, size)
    assert len(chunks) >= 8
    sentences = [sentence(i) for i in range(60)]
    for c in chunks:
        # chunks are whole sentences
        rebuilt = c.text
        for s in sentences:
            rebuilt = rebuilt.replace(s, "")
        assert rebuilt.strip() == "", c.text
    for prev, nxt in itertools.pairwise(chunks):
        prev_sents = [s for s in sentences if s in prev.text]
        nxt_sents = [s for s in sentences if s in nxt.text]
        shared = [s for s in prev_sents if s in nxt_sents]
        assert shared, "no overlap"
        assert nxt.text.startswith(shared[0])
        assert prev_sents[-len(shared) :] == shared  # the overlap is the previous chunk's tail
        shared_tokens = counter.count(" ".join(shared))
        assert 0 < shared_tokens <= overlap
    # everything is covered, in order
    seen = [s for c in chunks for s in sentences if s in c.text]
    assert list(dict.fromkeys(seen)) == sentences


def test_no_overlap_when_overlap_is_zero(counter: TokenCounter) -> None:
    text = paragraph(0, 30)
    chunks = Chunker(counter, size=100, overlap=0).chunk(doc_of(Section(text)))
    check_bounds(chunks, counter, 100)
    assert " ".join(c.text for c in chunks) == text


def test_a_giant_sentence_is_split_on_words_with_overlap(counter: TokenCounter) -> None:
    words = [f"word{i}" for i in range(900)]
    text = " ".join(words)  # one "sentence" with no full stop, ~2000 tokens
    size, overlap = 100, 20
    chunks = Chunker(counter, size=size, overlap=overlap).chunk(doc_of(Section(text)))
    check_bounds(chunks, counter, size)
    for prev, nxt in itertools.pairwise(chunks):
        first = nxt.text.split()[0]
        assert first in prev.text.split()  # starts inside the previous chunk: overlap
        assert prev.text.split()[-1] in nxt.text.split()
    covered = [w for c in chunks for w in c.text.split()]
    assert list(dict.fromkeys(covered)) == words


def test_a_giant_word_is_split_on_characters(counter: TokenCounter) -> None:
    blob = "".join(f"{i:x}q" for i in range(3000))  # no spaces at all
    chunks = Chunker(counter, size=64, overlap=10).chunk(doc_of(Section(f"Before. {blob} After.")))
    check_bounds(chunks, counter, 64)
    assert blob in "".join(c.text.replace("Before. ", "").replace(" After.", "") for c in chunks)


def test_plain_callable_counter_works(counter: TokenCounter) -> None:
    calls = 0

    def count(text: str) -> int:
        nonlocal calls
        calls += 1
        return counter.count(text)

    chunks = Chunker(count, size=80, overlap=20).chunk(doc_of(Section(paragraph(0, 20))))
    check_bounds(chunks, counter, 80)
    assert calls < 20 + 3 * len(chunks)  # each sentence once, each chunk about once


def test_counts_each_piece_once_not_growing_strings(counter: TokenCounter) -> None:
    seen: list[int] = []

    class Spy:
        def count(self, text: str, model: str | None = None) -> int:
            seen.append(len(text))
            return counter.count(text)

        def count_batch(self, texts: list[str], model: str | None = None) -> list[int]:
            seen.extend(len(t) for t in texts)
            return counter.count_batch(texts)

    text = "\n\n".join(paragraph(i * 20, 8) for i in range(20))
    chunks = Chunker(Spy(), size=200, overlap=40).chunk(doc_of(Section(text)))
    # Characters tokenised: the text once (as sentences) and each chunk once (its real count), plus a
    # few overlap tails; no re-counting of a growing chunk.
    assert sum(seen) <= len(text) + 1.1 * sum(len(c.text) for c in chunks)


def test_real_samples_chunk_with_their_metadata(counter: TokenCounter) -> None:
    chunker = Chunker(counter, size=40, overlap=10)
    pdf = chunker.chunk(parse((SAMPLES / "handbook.pdf").read_bytes(), "handbook.pdf"))
    check_bounds(pdf, counter, 40)
    assert {c.page for c in pdf} == {1, 2, 3}
    assert {c.title for c in pdf} == {"Employee Handbook"}
    parental = [c for c in pdf if "sixteen weeks" in c.text]
    assert parental and parental[0].page == 2 and parental[0].headings == ("Leave", "Parental leave")
    md = chunker.chunk(parse((SAMPLES / "handbook.md").read_bytes(), "handbook.md"))
    check_bounds(md, counter, 40)
    sick = [c for c in md if "doctor's note" in c.text]
    assert sick and sick[0].headings == ("Employee Handbook", "Leave", "Sick leave")


def test_chunking_thousands_of_sections(counter: TokenCounter) -> None:
    # 3,000 sections of 3 paragraphs (~180 tokens each): about 9,000 chunks of at most 60 tokens.
    sections = tuple(
        Section("\n\n".join(paragraph(k * 10 + j * 3, 3) for j in range(3)), (f"S{k}",)) for k in range(3000)
    )
    chunker = Chunker(counter, size=60, overlap=15)
    chunks = chunker.chunk(doc_of(*sections))  # its speed: bench/ (no wall-clock assertions in tests)
    assert len(chunks) >= 6000
    assert all(0 < c.tokens <= 60 for c in chunks)
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    assert all(c.tokens == counter.count(c.text) for c in chunks[:: max(1, len(chunks) // 200)])


def test_settings_defaults_and_validation() -> None:
    s = ChunkingSettings()
    assert 200 <= s.size <= 300
    assert 0 < s.overlap < s.size
    with pytest.raises(ValueError, match="overlap"):
        ChunkingSettings(size=100, overlap=100)
    with pytest.raises(ValueError):
        Chunker(len, size=10, overlap=10)
