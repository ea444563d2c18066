"""The limits a file must stay within to be parsed (``rag.parsing``), checked by ``parse`` in process."""

from __future__ import annotations

import pytest

from chatgate.rag.loaders import parse
from chatgate.rag.parse_limits import ParseLimits, check_zip
from chatgate.rag.types import ParseError
from chatgate.settings import Settings
from tests.rag.bombs import SAMPLES, docx_bomb, many_members, pdf_pages

MIB = 1024 * 1024


def test_the_settings_defaults_are_the_limits_defaults() -> None:
    assert ParseLimits.from_settings(Settings().rag.parsing) == ParseLimits()


def test_a_real_docx_is_within_every_limit() -> None:
    data = (SAMPLES / "handbook.docx").read_bytes()
    check_zip(data, ParseLimits())
    assert parse(data, "handbook.docx").title == "Employee Handbook"


def test_a_bomb_is_refused_from_its_directory_by_size_then_ratio() -> None:
    bomb = docx_bomb(64 * MIB)  # ~170 KB packed
    assert len(bomb) < MIB
    with pytest.raises(ParseError, match=r"unpacks to \d+ bytes.*zip_max_uncompressed_bytes"):
        parse(bomb, "bomb.docx", ParseLimits(zip_max_uncompressed_bytes=32 * MIB))
    with pytest.raises(ParseError, match=r"compressed \d+ to 1.*zip_max_ratio"):
        parse(bomb, "bomb.docx", ParseLimits())  # within the size limit, not the ratio
    with pytest.raises(ParseError, match="zip_max_ratio"):  # sniffed as docx without its extension too
        parse(bomb, "upload")


def test_too_many_members() -> None:
    with pytest.raises(ParseError, match=r"parts, more than the 50 allowed"):
        parse(many_members(60), "x.docx", ParseLimits(zip_max_members=50))
    assert parse(many_members(60), "x.docx").title == "Employee Handbook"


def test_a_pdf_over_the_page_cap_fails_before_its_text_is_read() -> None:
    data = pdf_pages(30)
    with pytest.raises(ParseError, match=r"pdf has 30 pages, more than the 10 allowed \(rag.parsing.max_pages\)"):
        parse(data, "long.pdf", ParseLimits(max_pages=10))
    with pytest.raises(ParseError, match="no text found"):  # within the cap: read (blank pages)
        parse(data, "long.pdf", ParseLimits(max_pages=30))


def test_text_over_the_cap_fails_in_every_format() -> None:
    limits = ParseLimits(max_text_chars=1000)
    words = "word " * 400
    with pytest.raises(ParseError, match="max_text_chars"):
        parse(words.encode(), "a.txt", limits)
    with pytest.raises(ParseError, match="max_text_chars"):
        parse(f"<html><body><p>{words}</p></body></html>".encode(), "a.html", limits)
    for sample in ("handbook.pdf", "handbook.docx"):  # 857 and 613 characters of text
        with pytest.raises(ParseError, match="max_text_chars"):
            parse((SAMPLES / sample).read_bytes(), sample, ParseLimits(max_text_chars=500))
        assert parse((SAMPLES / sample).read_bytes(), sample, limits).sections
    assert parse(("word " * 100).encode(), "a.txt", limits).sections
