"""parse() on a real file of each format, bad input as ParseError, and discover()."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from chatgate.rag.loaders import discover, parse
from chatgate.rag.types import ParsedDocument, ParseError

SAMPLES = Path(__file__).resolve().parent / "samples"


def load(name: str) -> ParsedDocument:
    return parse((SAMPLES / name).read_bytes(), name)


def section_with(doc: ParsedDocument, needle: str) -> int:
    hits = [i for i, s in enumerate(doc.sections) if needle in s.text]
    assert len(hits) == 1, (needle, [s.text for s in doc.sections])
    return hits[0]


def test_txt_is_one_section_titled_by_the_file_stem() -> None:
    doc = load("handbook.txt")
    assert doc.format == "txt"
    assert doc.title == "handbook"
    assert len(doc.sections) == 1
    section = doc.sections[0]
    assert section.headings == () and section.page is None
    paras = section.text.split("\n\n")
    assert len(paras) == 4
    assert paras[1].startswith("Every employee is entitled to twenty-five days")
    assert paras[1].endswith("end of March of the next year.")


def test_md_headings_make_the_heading_path() -> None:
    doc = load("handbook.md")
    assert doc.format == "md"
    assert doc.title == "Employee Handbook (2026 edition)"  # front matter beats the first heading
    paths = [s.headings for s in doc.sections]
    assert paths == [
        ("Employee Handbook",),
        ("Employee Handbook", "Leave"),
        ("Employee Handbook", "Leave", "Parental leave"),
        ("Employee Handbook", "Leave", "Sick leave"),
        ("Employee Handbook", "Expenses"),  # an underlined (setext) level-2 heading
    ]
    parental = doc.sections[2].text
    assert "sixteen weeks" in parental
    assert "# not a heading" in parental  # code fences are content, not structure
    assert "owner: people-team" not in "".join(s.text for s in doc.sections)
    assert "**receipts**" in doc.sections[4].text  # raw text kept


def test_md_title_falls_back_to_the_first_h1_then_the_stem() -> None:
    assert parse(b"intro\n\n# Guide\n\ntext", "x.md").title == "Guide"
    doc = parse(b"## Only a level two\n\ntext", "notes.md")
    assert doc.title == "notes"
    assert doc.sections[0].headings == ("Only a level two",)


def test_html_headings_paragraphs_and_dropped_elements() -> None:
    doc = load("handbook.html")
    assert doc.format == "html"
    assert doc.title == "Employee Handbook | Intranet"
    everything = "\n".join(s.text for s in doc.sections)
    for gone in ("tracking code", "font-family", "IT help desk", "a comment"):
        assert gone not in everything
    i = section_with(doc, "sixteen weeks")
    assert doc.sections[i].headings == ("Employee Handbook", "Leave", "Parental leave")
    assert doc.sections[i].text.split("\n\n") == [
        "Parents receive sixteen weeks of fully paid parental leave after the birth or adoption of a child.",
        "Up to three blocks.",
        "Within the first eighteen months.",
    ]
    j = section_with(doc, "Travel expenses")
    assert doc.sections[j].headings == ("Employee Handbook", "Expenses")
    assert doc.sections[j].text.endswith("receipts.\n\nEconomy class is the default.")
    k = section_with(doc, "twenty-five days")
    assert "calendar year. Leave accrues" in doc.sections[k].text  # source line breaks are spaces


def test_html_title_falls_back_to_h1() -> None:
    doc = parse(b"<html><body><h1>Release notes</h1><p>Fixed.</p></body></html>", "page.html")
    assert doc.title == "Release notes"
    assert doc.sections[0].headings == ("Release notes",)


def test_html_without_markup_is_its_text() -> None:
    doc = parse(b"https://example.com/page", "link.html")
    assert doc.title == "link" and doc.sections[0].text == "https://example.com/page"
    xhtml = b'<?xml version="1.0"?><html xmlns="http://www.w3.org/1999/xhtml"><body><h1>T</h1><p>x</p></body></html>'
    assert parse(xhtml, "a.xhtml").sections[0].headings == ("T",)


def test_pdf_pages_title_and_outline() -> None:
    doc = load("handbook.pdf")
    assert doc.format == "pdf"
    assert doc.title == "Employee Handbook"
    assert [s.page for s in doc.sections] == [1, 2, 3]
    assert [s.headings for s in doc.sections] == [("Leave",), ("Leave", "Parental leave"), ("Expenses",)]
    assert "twenty-five days" in doc.sections[0].text
    assert "sixteen weeks" in doc.sections[1].text
    assert "forty-five euros" in doc.sections[2].text
    # Lines wrapped by the layout are joined back; paragraphs stay apart.
    page1 = doc.sections[0].text
    assert "Leave accrues monthly and unused days" in page1
    assert "\n\nRequests for leave" in page1


def test_docx_headings_title_and_table() -> None:
    doc = load("handbook.docx")
    assert doc.format == "docx"
    assert doc.title == "Employee Handbook"  # from the Title-styled paragraph
    assert [s.headings for s in doc.sections] == [(), ("Leave",), ("Leave", "Parental leave"), ("Expenses",)]
    assert doc.sections[0].text == "This handbook describes the policies that apply to every employee."
    assert "sixteen weeks" in doc.sections[2].text
    assert doc.sections[3].text.split("\n\n")[1:] == ["Item | Limit", "Meals | 45 EUR", "Hotel | 160 EUR"]
    assert all(s.page is None for s in doc.sections)


def test_format_is_sniffed_without_a_known_extension() -> None:
    assert parse((SAMPLES / "handbook.pdf").read_bytes(), "upload.bin").format == "pdf"
    assert parse((SAMPLES / "handbook.docx").read_bytes(), "upload").format == "docx"
    assert parse((SAMPLES / "handbook.html").read_bytes(), "page").format == "html"
    assert parse(b"plain words", "README").format == "txt"


def test_text_encodings() -> None:
    assert parse("caf\u00e9 cr\u00e8me".encode("utf-16"), "a.txt").sections[0].text == "caf\u00e9 cr\u00e8me"
    assert parse("caf\u00e9".encode("cp1252"), "a.txt").sections[0].text == "caf\u00e9"
    assert parse(b"\xef\xbb\xbfbom", "a.txt").sections[0].text == "bom"


@pytest.mark.parametrize(
    ("name", "reason"),
    [("corrupt.pdf", "corrupt or unreadable pdf"), ("corrupt.docx", "corrupt or unreadable docx")],
)
def test_corrupt_samples(name: str, reason: str) -> None:
    with pytest.raises(ParseError, match=reason):
        load(name)


@pytest.mark.parametrize(
    ("data", "filename", "reason"),
    [
        (b"", "empty.txt", "empty file"),
        (b"  \n\t\n", "blank.md", "empty file"),
        (b"\x00\x01\x02binary\x00" * 50, "data.txt", "binary"),
        (b"\x00\x01\x02binary\x00" * 50, "data.html", "binary"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(200), "image.png", "unsupported format"),
        (b"%PDF-1.7\n%%EOF", "tiny.pdf", "pdf"),
        (b"<html><body><script>x()</script></body></html>", "blank.html", "no text found"),
        (b"PK\x03\x04 not really a zip", "x.docx", "docx"),
    ],
)
def test_bad_input_is_a_parse_error(data: bytes, filename: str, reason: str) -> None:
    with pytest.raises(ParseError, match=reason):
        parse(data, filename)


@pytest.mark.parametrize("ext", [".txt", ".md", ".html", ".pdf", ".docx", ""])
def test_random_bytes_never_escape_as_another_exception(ext: str) -> None:
    rng = random.Random(ext)
    for n in (1, 7, 100, 5000):
        data = bytes(rng.getrandbits(8) for _ in range(n))
        try:
            parse(data, "junk" + ext)
        except ParseError:
            pass


def test_truncated_real_files_are_parse_errors_or_documents() -> None:
    for name in ("handbook.pdf", "handbook.docx"):
        data = (SAMPLES / name).read_bytes()
        for cut in (10, len(data) // 3, len(data) // 2, len(data) - 20):
            try:
                doc = parse(data[:cut], name)
            except ParseError:
                continue
            assert isinstance(doc, ParsedDocument)


def test_discover_files_dirs_and_globs(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    (docs / "hr" / "deep").mkdir(parents=True)
    (docs / ".git").mkdir()
    for rel in ("a.md", "hr/b.PDF", "hr/deep/c.html", "hr/deep/d.txt", "notes.xlsx", ".git/e.md", "hr/.f.md"):
        (docs / rel).write_text("x")
    single = tmp_path / "single.docx"
    single.write_text("x")
    (tmp_path / "skip.csv").write_text("x")

    found = discover([docs, single, str(single)])
    assert found == sorted(
        p.resolve() for p in (docs / "a.md", docs / "hr/b.PDF", docs / "hr/deep/c.html", docs / "hr/deep/d.txt", single)
    )
    assert discover([f"{docs}/**/*.html", f"{docs}/**/*.md"]) == [
        (docs / "a.md").resolve(),
        (docs / "hr/deep/c.html").resolve(),
    ]
    assert discover([docs], patterns=["*.txt"]) == [(docs / "hr/deep/d.txt").resolve()]
    assert discover([tmp_path / "skip.csv"]) == []  # not a supported format
    assert discover([f"{tmp_path}/nothing/*.md"]) == []


def test_discover_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("x")
    monkeypatch.chdir(tmp_path)
    assert discover(["docs/**/*.md", "docs"]) == [(tmp_path / "docs" / "a.md").resolve()]
    with pytest.raises(FileNotFoundError, match="missing"):
        discover(["missing"])
    assert os.getcwd() == str(tmp_path)
