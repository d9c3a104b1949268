"""Files for the document tests, made in the test itself: PDFs (fpdf2, pypdf), Word files, bombs, encodings."""

from __future__ import annotations

import io
import zipfile

import docx
import pytest
from fpdf import FPDF
from pypdf import PdfReader, PdfWriter


def make_pdf(pages: list[str], *, outline: dict[int, str] | None = None) -> bytes:
    """A PDF with a text layer, one string per page; `outline` adds bookmarks (page number -> title)."""
    pdf = FPDF()
    pdf.set_font("helvetica", size=11)
    for number, text in enumerate(pages, start=1):
        pdf.add_page()
        if outline and number in outline:
            pdf.start_section(outline[number])
        pdf.multi_cell(0, 6, text)
    return bytes(pdf.output())


def make_scanned_pdf(pages: int = 2) -> bytes:
    """Pages that are only pictures (filled shapes here): no text layer, like a scan without OCR."""
    pdf = FPDF()
    for _ in range(pages):
        pdf.add_page()
        pdf.set_fill_color(40, 40, 40)
        pdf.rect(20, 20, 150, 200, style="F")
    return bytes(pdf.output())


def make_encrypted_pdf(text: str) -> bytes:
    reader = PdfReader(io.BytesIO(make_pdf([text])))
    writer = PdfWriter()
    for page in reader.pages:
        writer.add_page(page)
    writer.encrypt(user_password="s3cret", owner_password="s3cret", algorithm="AES-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def make_docx(blocks: list[tuple[str, str]]) -> bytes:
    """A Word file from (style, text) pairs: style "h1", "h2", ... for headings, "p" for a paragraph."""
    document = docx.Document()
    for style, text in blocks:
        if style.startswith("h"):
            document.add_heading(text, level=int(style[1:]))
        else:
            document.add_paragraph(text)
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def make_docx_bomb(unpacked_mb: int = 60) -> bytes:
    """A DOCX-looking zip whose document.xml inflates from a few kilobytes to `unpacked_mb` megabytes."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("word/document.xml", b" " * (unpacked_mb * 1024 * 1024))
    return out.getvalue()


@pytest.fixture
def q_sync(settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Queued jobs (indexing included) run at once, in the process that queues them."""
    from django_q.conf import Conf  # django-q2 reads the settings on import: not in scripts without Django

    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "sync": True}
    monkeypatch.setattr(Conf, "SYNC", True)
