"""Hostile files built in the tests: a decompression bomb as a real .docx, a pdf of many pages."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

SAMPLES = Path(__file__).resolve().parent / "samples"
_PARAGRAPH = b"<w:p><w:r><w:t>" + b"bomb " * 200 + b"</w:t></w:r></w:p>"


def docx_bomb(unpacked: int, base: Path = SAMPLES / "handbook.docx") -> bytes:
    """The sample .docx with its ``word/document.xml`` replaced by ``unpacked`` bytes of valid, highly
    compressible paragraphs: a small file that python-docx would unpack and parse whole."""
    out = io.BytesIO()
    with zipfile.ZipFile(base) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if info.filename != "word/document.xml":
                dst.writestr(info, src.read(info))
                continue
            xml = src.read(info)
            head, tail = xml[: xml.index(b"<w:body>") + 8], b"<w:sectPr/></w:body></w:document>"
            bomb = zipfile.ZipInfo("word/document.xml")
            bomb.compress_type = zipfile.ZIP_DEFLATED
            with dst.open(bomb, "w", force_zip64=True) as member:
                member.write(head)
                block = _PARAGRAPH * (1024 * 1024 // len(_PARAGRAPH))
                written = len(head)
                while written + len(block) + len(tail) <= unpacked:
                    member.write(block)
                    written += len(block)
                member.write(tail)
    return out.getvalue()


def many_members(n: int) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(SAMPLES / "handbook.docx") as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        for i in range(n):
            dst.writestr(f"chatgate-test/part{i}.xml", b"<x/>")
    return out.getvalue()


def pdf_pages(n: int) -> bytes:
    """A pdf of ``n`` blank pages (pypdf's writer)."""
    from pypdf import PdfWriter

    writer = PdfWriter()
    for _ in range(n):
        writer.add_blank_page(width=200, height=200)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()
