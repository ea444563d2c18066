"""Regenerates the binary samples (handbook.pdf, handbook.docx, the corrupt ones); run by hand.

    python -m venv /tmp/samples && /tmp/samples/bin/pip install fpdf2 python-docx
    /tmp/samples/bin/python tests/rag/samples/make_samples.py

The text samples (handbook.txt, .md, .html) are written by hand. The pdf is made with fpdf2 (three
pages, a title in its metadata, an outline: Leave > Parental leave, Expenses); the docx with
python-docx (a Title paragraph, Heading 1/2 paragraphs, a table).
"""

from __future__ import annotations

from pathlib import Path

from docx import Document
from fpdf import FPDF

HERE = Path(__file__).resolve().parent

PAGES = [
    (
        "Leave",
        None,
        [
            "Every employee is entitled to twenty-five days of paid annual leave per calendar year. "
            "Leave accrues monthly and unused days carry over until the end of March of the next year.",
            "Requests for leave longer than two weeks must be approved by a manager at least one month "
            "in advance. The leave calendar is kept in the staff portal.",
        ],
    ),
    (
        "Leave",
        "Parental leave",
        [
            "Parents receive sixteen weeks of fully paid parental leave after the birth or adoption of a child. "
            "The leave can be taken in up to three blocks during the first eighteen months.",
            "Employees on parental leave keep accruing annual leave and remain eligible for bonuses.",
        ],
    ),
    (
        "Expenses",
        None,
        [
            "Travel expenses are reimbursed within ten working days of submitting the receipts. "
            "Economy class is the default for flights shorter than six hours.",
            "Meals during business travel are covered up to a daily allowance of forty-five euros.",
        ],
    ),
]


def make_pdf(path: Path) -> None:
    pdf = FPDF()
    pdf.set_title("Employee Handbook")
    pdf.set_author("chatgate tests")
    pdf.set_font("Helvetica", size=11)
    for top, sub, paragraphs in PAGES:
        pdf.add_page()
        if sub is None:
            pdf.start_section(top, level=0)
            pdf.set_font("Helvetica", "B", 16)
            pdf.cell(0, 10, top, new_x="LMARGIN", new_y="NEXT")
        else:
            pdf.start_section(sub, level=1)
            pdf.set_font("Helvetica", "B", 13)
            pdf.cell(0, 10, sub, new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", size=11)
        for para in paragraphs:
            pdf.multi_cell(0, 6, para, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(6)
    pdf.output(str(path))


def make_docx(path: Path) -> None:
    doc = Document()
    doc.core_properties.title = ""
    doc.add_paragraph("Employee Handbook", style="Title")
    doc.add_paragraph("This handbook describes the policies that apply to every employee.")
    doc.add_heading("Leave", level=1)
    doc.add_paragraph(PAGES[0][2][0])
    doc.add_heading("Parental leave", level=2)
    doc.add_paragraph(PAGES[1][2][0])
    doc.add_heading("Expenses", level=1)
    doc.add_paragraph(PAGES[2][2][0])
    table = doc.add_table(rows=3, cols=2)
    for row, (kind, limit) in zip(
        table.rows, [("Item", "Limit"), ("Meals", "45 EUR"), ("Hotel", "160 EUR")], strict=True
    ):
        row.cells[0].text = kind
        row.cells[1].text = limit
    doc.save(str(path))


def main() -> None:
    make_pdf(HERE / "handbook.pdf")
    make_docx(HERE / "handbook.docx")
    good = (HERE / "handbook.pdf").read_bytes()
    # A pdf cut off after its header and first object, with its body bytes scrambled.
    (HERE / "corrupt.pdf").write_bytes(good[:400] + bytes(reversed(good[400:1200])))
    # A zip signature followed by noise: what a truncated download of a docx looks like.
    (HERE / "corrupt.docx").write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)


if __name__ == "__main__":
    main()
