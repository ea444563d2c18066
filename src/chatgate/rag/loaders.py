"""Files to ``ParsedDocument``s: txt, md, html, pdf and docx, and the list of files to ingest.

:func:`parse` picks the format from the file name's extension, or from the bytes when the extension
says nothing (``%PDF-``, a zip holding ``word/document.xml``, ``<html``, else text). What each format
gives:

- **txt**: one section, paragraphs kept (blank lines); title: the file stem.
- **md**: ``#`` and underlined (``===``/``---``) headings outside code fences make the heading path;
  title: ``title:`` of the front matter, else the first level-1 heading, else the file stem.
- **html**: ``h1``-``h6`` make the heading path; ``script``, ``style``, ``nav`` (and ``noscript``,
  ``template``, ``svg``) are dropped; block elements end paragraphs; title: ``<title>``, else the
  first ``h1``, else the file stem.
- **pdf** (pypdf): one section per page with its 1-based ``page``; the outline (bookmarks), when there
  is one, gives each page the heading path it starts under; title: the metadata title, else the stem.
- **docx** (python-docx): paragraphs styled ``Heading N`` make the heading path, tables become one
  line per row; title: the core properties' title, else a ``Title``-styled paragraph, else the first
  level-1 heading, else the stem.

Whatever the input, bad bytes end in :class:`ParseError` with the reason (empty, binary, corrupt,
encrypted, no text, over a limit of :class:`~chatgate.rag.parse_limits.ParseLimits`), never in another
exception, except ``MemoryError``, passed on for the parse worker to report.
"""

from __future__ import annotations

import glob
import io
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path, PurePath
from typing import Any

from chatgate.rag.parse_limits import ParseLimits, TextBudget, check_pages, check_zip
from chatgate.rag.types import ParsedDocument, ParseError, Section

FORMATS: dict[str, str] = {
    ".txt": "txt",
    ".text": "txt",
    ".md": "md",
    ".markdown": "md",
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
    ".pdf": "pdf",
    ".docx": "docx",
}
"""File extension -> format, for every extension :func:`parse` and :func:`discover` accept."""

DEFAULT_PATTERNS: tuple[str, ...] = tuple(f"*{ext}" for ext in FORMATS)

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
_SPACES = re.compile(r"[ \t\r\f\v\u00a0]+")
_GLOB_CHARS = re.compile(r"[*?\[]")


DEFAULT_LIMITS = ParseLimits()


def parse(data: bytes, filename: str, limits: ParseLimits = DEFAULT_LIMITS) -> ParsedDocument:
    """Parse ``data``, the content of the file called ``filename``, within ``limits``; :class:`ParseError`
    says why not."""
    stem = PurePath(filename).stem or filename or "untitled"
    if not data.strip():
        raise ParseError(f"{filename}: empty file")
    fmt = FORMATS.get(PurePath(filename).suffix.lower()) or _sniff(data)
    if fmt is None:
        raise ParseError(f"{filename}: unsupported format (not text, markdown, html, pdf or docx)")
    if fmt == "pdf":
        doc = _parse_pdf(data, stem, limits)
    elif fmt == "docx":
        check_zip(data, limits)
        doc = _parse_docx(data, stem)
    elif fmt == "html":
        doc = _parse_html(data, stem)
    else:
        text = _decode_text(data)
        doc = _parse_markdown(text, stem) if fmt == "md" else _parse_txt(text, stem)
    TextBudget(limits).spend(sum(len(s.text) for s in doc.sections))
    if not doc.sections:
        raise ParseError(f"{filename}: no text found" + (" (a scanned pdf?)" if fmt == "pdf" else ""))
    return doc


def discover(paths: Sequence[str | Path], patterns: Sequence[str] = DEFAULT_PATTERNS) -> list[Path]:
    """The files to ingest: sorted, absolute, each once, only of a supported format.

    Each path is a file, a directory (searched recursively, hidden files and folders skipped, file
    names matched against ``patterns``), or a glob (``docs/**/*.md``). A path that is neither an
    existing file or directory nor a glob raises :class:`FileNotFoundError`.
    """
    found: set[Path] = set()
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            found.update(_walk(path, patterns))
        elif path.is_file():
            found.add(path)
        elif _GLOB_CHARS.search(str(raw)):
            for match in glob.glob(str(path), recursive=True):
                hit = Path(match)
                if hit.is_dir():
                    found.update(_walk(hit, patterns))
                elif hit.is_file():
                    found.add(hit)
        else:
            raise FileNotFoundError(f"no such file or directory: {raw}")
    return sorted({p.resolve() for p in found if p.suffix.lower() in FORMATS})


def _walk(root: Path, patterns: Sequence[str]) -> Iterator[Path]:
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if not name.startswith(".") and any(PurePath(name.lower()).match(p.lower()) for p in patterns):
                yield Path(folder, name)


# -- text ----------------------------------------------------------------------------------------


def _sniff(data: bytes) -> str | None:
    head = data[:1024].lstrip()
    if head.startswith(b"%PDF-"):
        return "pdf"
    if head.startswith(b"PK\x03\x04"):
        return "docx" if b"word/" in data[:65536] or b"[Content_Types].xml" in data[:65536] else None
    if re.match(rb"(?i)(\xef\xbb\xbf)?\s*<(!doctype\s+html|html|head|body)\b", head):
        return "html"
    try:
        _decode_text(data)
    except ParseError:
        return None
    return "txt"


def _decode_text(data: bytes) -> str:
    """UTF-8 (or UTF-16 with a BOM, or cp1252 for legacy files); binary content is a ParseError."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            raise ParseError("invalid UTF-16 text") from None
    _reject_binary(data)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def _reject_binary(data: bytes) -> None:
    """Text has no NUL bytes and (almost) no other control characters; random bytes have ~10%."""
    sample = data[:65536]
    controls = sum(1 for b in sample if b < 9 or 13 < b < 32)
    if b"\x00" in sample or controls > len(sample) // 100:
        raise ParseError("binary content, not text")


def _paragraphs(text: str) -> str:
    """Normalise line ends and spaces; paragraphs separated by one blank line; '' when no text."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    paras = (_SPACES.sub(" ", p).strip() for p in _PARAGRAPH_BREAK.split(text))
    return "\n\n".join(p for p in paras if p)


def _parse_txt(text: str, stem: str) -> ParsedDocument:
    body = _paragraphs(text)
    return ParsedDocument(title=stem, sections=(Section(body),) if body else (), format="txt")


class _Sections:
    """Collects sections under a heading path that changes as headings are met."""

    def __init__(self) -> None:
        self.stack: list[tuple[int, str]] = []
        self.lines: list[str] = []
        self.sections: list[Section] = []

    def heading(self, level: int, text: str) -> None:
        self.flush()
        while self.stack and self.stack[-1][0] >= level:
            self.stack.pop()
        if text:
            self.stack.append((level, text))

    def flush(self, page: int | None = None) -> None:
        body = _paragraphs("\n".join(self.lines))
        self.lines = []
        if body:
            self.sections.append(Section(body, tuple(t for _, t in self.stack), page))


# -- markdown ------------------------------------------------------------------------------------

_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_FRONT_TITLE = re.compile(r"^title:\s*(.+?)\s*$", re.MULTILINE)


def _parse_markdown(text: str, stem: str) -> ParsedDocument:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    title = ""
    if text.startswith("---\n"):
        end = text.find("\n---", 4)
        if end > 0:
            m = _FRONT_TITLE.search(text, 4, end)
            if m:
                title = m.group(1).strip("\"'")
            text = text[text.find("\n", end + 1) + 1 :] if "\n" in text[end + 1 :] else ""
    out = _Sections()
    fence: str | None = None
    for line in text.split("\n"):
        m = _FENCE.match(line)
        if fence is not None:
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
                fence = None
            out.lines.append(line)
            continue
        if m:
            fence = m.group(1)
            out.lines.append(line)
            continue
        atx = _ATX.match(line)
        setext = _SETEXT.match(line)
        if atx:
            level, heading = len(atx.group(1)), _clean_md(atx.group(2) or "")
        elif setext and out.lines and out.lines[-1].strip() and (setext.group(1)[0] == "=" or len(line.strip()) >= 2):
            level, heading = (1 if setext.group(1)[0] == "=" else 2), _clean_md(out.lines.pop())
        else:
            out.lines.append(line)
            continue
        if level == 1 and not title and heading:
            title = heading
        out.heading(level, heading)
    out.flush()
    return ParsedDocument(title=title or stem, sections=tuple(out.sections), format="md")


def _clean_md(heading: str) -> str:
    """Heading text without emphasis and link markup (``**Leave** [policy](x)`` -> ``Leave policy``)."""
    heading = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    return re.sub(r"[*_`]+", "", heading).strip()


# -- html ----------------------------------------------------------------------------------------

_DROP = frozenset({"script", "style", "nav", "noscript", "template", "svg", "head"})
_HEADINGS = {f"h{n}": n for n in range(1, 7)}
_BLOCKS = frozenset(
    "address article aside blockquote body dd details div dl dt fieldset figcaption figure footer form header "
    "hr li main ol p pre section summary table tbody td tfoot th thead tr ul".split()
)
_BREAK = object()


def _parse_html(data: bytes, stem: str) -> ParsedDocument:
    from bs4 import BeautifulSoup
    from bs4.element import Comment, NavigableString, Tag

    if not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        _reject_binary(data)
        if b"<" not in data:  # no markup at all (BeautifulSoup would warn it looks like a URL or file name)
            body = _paragraphs(_decode_text(data))
            return ParsedDocument(title=stem, sections=(Section(body),) if body else (), format="html")
    try:
        soup = BeautifulSoup(data, "lxml")
    except MemoryError:
        raise
    except Exception as exc:  # lxml's parser errors on pathological input
        raise ParseError(f"unreadable html: {exc}") from exc
    title_tag = soup.find("title")
    title = title_tag.get_text(" ", strip=True) if isinstance(title_tag, Tag) else ""
    out = _Sections()
    root = soup.body or soup
    stack: list[Any] = [root]
    while stack:
        node = stack.pop()
        if node is _BREAK:
            out.lines.append("\n")
        elif isinstance(node, Comment):
            continue
        elif isinstance(node, NavigableString):
            out.lines.append(str(node).replace("\n", " "))
        elif isinstance(node, Tag):
            name = node.name.lower()
            if name in _DROP:
                continue
            level = _HEADINGS.get(name)
            if level is not None:
                text = _SPACES.sub(" ", node.get_text(" ", strip=True)).strip()
                out.lines = ["".join(out.lines)]
                if level == 1 and not title and text:
                    title = text
                out.heading(level, text)
            elif name == "br":
                out.lines.append("\n")
            else:
                block = name in _BLOCKS
                if block:
                    stack.append(_BREAK)
                stack.extend(reversed(node.contents))
                if block:
                    stack.append(_BREAK)
    out.lines = ["".join(out.lines)]
    out.flush()
    return ParsedDocument(title=title or stem, sections=tuple(_html_sections(out.sections)), format="html")


def _html_sections(sections: Iterable[Section]) -> Iterator[Section]:
    # A block element ends a line; a blank line (two breaks) ends a paragraph: make every line one.
    for s in sections:
        body = "\n\n".join(line.strip() for line in s.text.split("\n") if line.strip())
        yield Section(body, s.headings, s.page)


# -- pdf -----------------------------------------------------------------------------------------


def _parse_pdf(data: bytes, stem: str, limits: ParseLimits) -> ParsedDocument:
    from pypdf import PdfReader

    budget = TextBudget(limits)
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise ParseError("encrypted pdf (password required)")
        check_pages(len(reader.pages), limits)
        title = ""
        meta = reader.metadata
        if meta is not None and meta.title:
            title = str(meta.title).strip()
        starts = _outline_starts(reader)
        sections: list[Section] = []
        headings: tuple[str, ...] = ()
        for number, page in enumerate(reader.pages, start=1):
            headings = starts.get(number, headings)
            text = page.extract_text() or ""
            budget.spend(len(text))  # stop early: parse() counts the document's whole text again
            body = _pdf_paragraphs(text)
            if body:
                sections.append(Section(body, headings, number))
    except (ParseError, MemoryError):
        raise
    except Exception as exc:  # pypdf raises many types (PdfReadError, ValueError, KeyError...) on damage
        raise ParseError(f"corrupt or unreadable pdf: {exc or type(exc).__name__}") from exc
    return ParsedDocument(title=title or stem, sections=tuple(sections), format="pdf")


def _pdf_paragraphs(text: str) -> str:
    """A page's lines rejoined into paragraphs: a line ends one when it ends a sentence well short of
    the page's longest line (pdf text has line breaks where the layout wrapped, and no blank lines)."""
    lines = [_SPACES.sub(" ", line).strip() for line in text.replace("\r", "\n").split("\n")]
    lines = [line for line in lines if line]
    if not lines:
        return ""
    width = max(len(line) for line in lines)
    paras: list[list[str]] = [[]]
    for line in lines:
        paras[-1].append(line)
        if line[-1] in ".!?:" and len(line) < 0.8 * width:
            paras.append([])
    return "\n\n".join(" ".join(p) for p in paras if p)


def _outline_starts(reader: Any) -> dict[int, tuple[str, ...]]:
    """Page number -> the heading path of the last outline entry pointing at or before it."""
    entries: list[tuple[int, tuple[str, ...]]] = []

    def walk(items: list[Any], path: tuple[str, ...]) -> None:
        last: tuple[str, ...] = path
        for item in items:
            if isinstance(item, list):
                walk(item, last)
                continue
            try:
                page = reader.get_destination_page_number(item)
            except Exception:  # a dangling bookmark
                continue
            last = (*path, str(item.title).strip())
            if page is not None and page >= 0:
                entries.append((page + 1, last))

    try:
        walk(reader.outline, ())
    except Exception:  # a damaged outline: pages keep no heading path
        return {}
    starts: dict[int, tuple[str, ...]] = {}
    for page, path in sorted(entries, key=lambda e: e[0]):
        starts[page] = path  # the last entry on a page wins: the page continues under it
    # A page without its own entry keeps the previous page's path (done by the caller); pages before
    # the first entry have none.
    return starts


# -- docx ----------------------------------------------------------------------------------------

_HEADING_STYLE = re.compile(r"^heading\s*(\d)$", re.IGNORECASE)


def _parse_docx(data: bytes, stem: str) -> ParsedDocument:
    from docx import Document
    from docx.table import Table

    try:
        doc = Document(io.BytesIO(data))
        title = (doc.core_properties.title or "").strip()
        first_h1 = ""
        out = _Sections()
        for block in doc.iter_inner_content():
            if isinstance(block, Table):
                for row in block.rows:
                    cells = [c.text.strip() for c in row.cells]
                    line = " | ".join(dict.fromkeys(c for c in cells if c))  # merged cells repeat
                    if line:
                        out.lines.append(line + "\n")
                continue
            text = block.text.strip()
            style = (block.style.name if block.style is not None else "") or ""
            m = _HEADING_STYLE.match(style)
            if style.lower() == "title":
                if not title and text:
                    title = text
            elif m:
                level = int(m.group(1))
                if level == 1 and not first_h1:
                    first_h1 = text
                out.heading(level, text)
            elif text:
                out.lines.append(text + "\n")
        out.flush()
    except MemoryError:
        raise
    except Exception as exc:  # python-docx / zipfile / lxml raise many types on a damaged file
        raise ParseError(f"corrupt or unreadable docx: {exc or type(exc).__name__}") from exc
    return ParsedDocument(title=title or first_h1 or stem, sections=tuple(out.sections), format="docx")
