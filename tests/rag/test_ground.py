"""The ground step's plain parts: system prompt merging, the query, sources within a token budget."""

from __future__ import annotations

from chatgate.rag.ground import build_context, query_text, source_block, source_json, with_system
from chatgate.rag.retrieve import Hit


def hit(n: int, words: int = 10, page: int | None = None) -> Hit:
    return Hit(
        chunk_id=n,
        document_id=f"d{n}",
        collection_id="c",
        source=f"doc{n}.md",
        title=f"Doc {n}",
        text=" ".join(f"w{n}" for _ in range(words)),
        page=page,
        headings=("Leave", "Parental"),
        ordinal=0,
        score=1.0 / n,
    )


def words(text: str) -> int:
    return len(text.split())


def test_system_prompt_goes_first_in_one_system_message() -> None:
    user = {"role": "user", "content": "hi"}
    assert with_system([user], "Be HR.") == [{"role": "system", "content": "Be HR."}, user]
    merged = with_system([{"role": "system", "content": "Be brief."}, user], "Be HR.")
    assert merged == [{"role": "system", "content": "Be HR.\n\nBe brief."}, user]
    after = with_system(merged, "Sources: ...", before=False)
    assert after[0]["content"] == "Be HR.\n\nBe brief.\n\nSources: ..." and len(after) == 2
    parts = with_system([{"role": "system", "content": [{"type": "text", "text": "x"}]}, user], "Be HR.")
    assert parts[0]["content"][0] == {"type": "text", "text": "Be HR."}
    assert with_system([user], None) == [user]


def test_query_is_the_last_user_message_optionally_with_earlier_ones() -> None:
    messages = [
        {"role": "user", "content": "about leave"},
        {"role": "assistant", "content": "yes?"},
        {"role": "user", "content": [{"type": "text", "text": "how long?"}]},
    ]
    assert query_text(messages) == "how long?"
    assert query_text(messages, condense_turns=1) == "about leave\nhow long?"
    assert query_text([{"role": "system", "content": "x"}]) == ""


def test_sources_are_numbered_and_the_lowest_ranked_dropped_to_fit() -> None:
    hits = [hit(1), hit(2), hit(3, page=4)]
    assert source_block(3, hits[2]).startswith("[3] Doc 3 > Leave > Parental (page 4)\n")
    text, kept = build_context(hits, "Cite.\n{sources}", words, budget=1000)
    assert kept == hits and text is not None and "[1] Doc 1" in text and "[3] Doc 3" in text
    # each block is 17 words + 2 for the gap; the template 1; slack 8
    text, kept = build_context(hits, "Cite.\n{sources}", words, budget=8 + 1 + 2 * 19)
    assert kept == hits[:2] and text is not None and "[3]" not in text
    assert build_context(hits, "Cite.\n{sources}", words, budget=10) == (None, [])


def test_source_json_is_a_citation() -> None:
    out = source_json(2, hit(7, page=1))
    assert out == {
        "index": 2,
        "document": "doc7.md",
        "document_id": "d7",
        "collection_id": "c",
        "title": "Doc 7",
        "chunk_id": 7,
        "page": 1,
        "headings": ["Leave", "Parental"],
        "score": round(1 / 7, 6),
    }
