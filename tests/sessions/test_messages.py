"""What messages say about a request: its kind, dedupe keys, inline data compaction."""

from __future__ import annotations

from chatgate.sessions.messages import compact, dedupe_key, is_multimodal, request_kind


def test_request_kinds():
    text = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    image = {
        "model": "m",
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
    }
    assert request_kind(text, {}, frozenset()) == "standard"
    assert request_kind({**text, "tools": [{}]}, {}, frozenset()) == "standard"  # offered, not called (tests/sessions)
    assert request_kind(image, {}, frozenset()) == "multimodal" and is_multimodal(image["messages"])
    assert request_kind(text, {"web_search": True}, frozenset()) == "research"
    assert request_kind(text, {}, frozenset({"m"})) == "research"
    assert request_kind({**text, "research": True}, {}, frozenset()) == "research"


def test_dedupe_keys_are_stable_and_distinct():
    assert dedupe_key(0, "user", "hi") == dedupe_key(0, "user", "hi")
    assert dedupe_key(0, "user", "hi") != dedupe_key(2, "user", "hi")  # the same words later are a new message
    assert dedupe_key(0, "user", "hi") != dedupe_key(0, "assistant", "hi")
    assert dedupe_key(0, "user", "hi", "mid-1") == dedupe_key(5, "user", "other", "mid-1")


def test_large_inline_data_is_stored_as_hash_and_size():
    big = "data:image/png;base64," + "A" * 5000
    parts = [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": big, "detail": "low"}}]
    stored = compact(parts, keep_bytes=False, limit=2048)
    assert stored[0] == parts[0]
    image = stored[1]["image_url"]
    assert image["url"] is None and image["size"] == len(big) and len(image["sha256"]) == 64
    assert image["detail"] == "low" and image["media_type"] == "image/png"
    assert compact(parts, keep_bytes=True, limit=2048) == parts
    small = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
    assert compact(small, keep_bytes=False, limit=2048) == small
