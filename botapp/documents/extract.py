"""From the bytes of a file to its text, in sections that keep their page number and heading.

Libraries do the parsing: pypdf (PDF, its outline gives the headings), python-docx (Word), lxml (HTML),
markdown-it-py (Markdown headings), charset-normalizer (text in legacy encodings). What a person can get
wrong (a password, a scan without text, an archive bomb, a type Jarvis does not read) is a DocumentError
whose text is the sentence to show them.
"""

from __future__ import annotations

import codecs
import io
import logging
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import charset_normalizer
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

logger = logging.getLogger(__name__)

# A DOCX is a zip archive: more than this unpacked, or a part that inflates more than RATIO times, is a bomb.
MAX_UNPACKED_BYTES = 200 * 1024 * 1024
MAX_RATIO = 200
# Fewer letters than this in a whole PDF: it is pictures of pages, not text.
MIN_TEXT_CHARS = 20
# How much of a text file charset detection reads; the whole file is then decoded with what it found.
DETECTION_SAMPLE = 256 * 1024

TEXT_EXTENSIONS = frozenset(
    """txt text md markdown mdown rst org tex log csv tsv json jsonl yaml yml toml ini cfg conf env xml srt vtt
    py pyi js mjs cjs ts tsx jsx java kt kts scala go rs rb php pl pm lua r m mm swift c h cc cpp cxx hpp hh cs
    fs vb sql sh bash zsh fish ps1 bat cmd css scss sass less vue svelte dart ex exs erl hs clj elm nim zig
    gradle makefile dockerfile proto graphql ipynb""".split()
)
HTML_EXTENSIONS = frozenset({"html", "htm", "xhtml"})
MARKDOWN_EXTENSIONS = frozenset({"md", "markdown", "mdown"})
SUPPORTED = gettext_lazy("PDF, Word (.docx), plain text, Markdown, HTML, CSV and source code")


class DocumentError(Exception):
    """The file cannot be read; `str(error)` says why and what to do, for the person who sent it."""


@dataclass
class Section:
    """A stretch of text from one page (when the format has pages) under one heading."""

    text: str
    page: int | None = None
    heading: str = ""


@dataclass
class Extracted:
    kind: str
    sections: list[Section] = field(default_factory=list)
    pages: int | None = None

    @property
    def text(self) -> str:
        return "\n\n".join(section.text for section in self.sections)


Progress = Callable[[int, int], None]


def _extension(file_name: str) -> str:
    name = PurePosixPath(file_name.lower()).name
    if "." not in name:
        return name  # Makefile, Dockerfile
    return name.rsplit(".", 1)[1]


def kind_of(*, file_name: str, mime_type: str = "", head: bytes = b"") -> str | None:
    """ "pdf", "docx", "html", "markdown", "text", or None for a type Jarvis does not read."""
    extension = _extension(file_name)
    mime = (mime_type or "").split(";")[0].strip().lower()
    if head.startswith(b"%PDF-") or extension == "pdf" or mime == "application/pdf":
        return "pdf"
    if extension == "docx" or mime == "application/vnd.openxmlformats-officedocument.wordprocessingml.document":
        return "docx"
    if extension in HTML_EXTENSIONS or mime in ("text/html", "application/xhtml+xml"):
        return "html"
    if extension in MARKDOWN_EXTENSIONS or mime == "text/markdown":
        return "markdown"
    if extension in TEXT_EXTENSIONS or mime.startswith("text/") or mime in ("application/json", "application/xml"):
        return "text"
    return None


def unsupported_sentence(file_name: str) -> str:
    return _("Jarvis cannot read “%(name)s”: it reads %(supported)s. Send the file in one of these formats.") % {
        "name": file_name,
        "supported": SUPPORTED,
    }


def extract(*, data: bytes, file_name: str, mime_type: str = "", on_progress: Progress | None = None) -> Extracted:
    """The text of a file in sections; raises DocumentError with a sentence for the person."""
    kind = kind_of(file_name=file_name, mime_type=mime_type, head=data[:8])
    if kind is None and data[:4] != b"PK\x03\x04" and _looks_like_text(data):
        kind = "text"
    if kind is None:
        if data.startswith(b"\xd0\xcf\x11\xe0"):
            raise DocumentError(
                _("“%(name)s” is in the old Word format (.doc). Save it as .docx or PDF and send it again.")
                % {"name": file_name}
            )
        raise DocumentError(unsupported_sentence(file_name))
    if kind == "pdf":
        return _pdf(data, file_name, on_progress)
    if kind == "docx":
        return _docx(data, file_name)
    text = decode_text(data, file_name=file_name)
    if kind == "html":
        return Extracted(kind="html", sections=markdown_sections(_html_to_markdown(text)))
    if kind == "markdown":
        return Extracted(kind="markdown", sections=markdown_sections(text))
    if _extension(file_name) in ("csv", "tsv"):
        return Extracted(kind="csv", sections=_csv_sections(text))
    return Extracted(kind="text", sections=[Section(text=text)] if text.strip() else [])


# --- Text ---------------------------------------------------------------------------------------

_BOMS = (
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def _looks_like_text(data: bytes) -> bool:
    sample = data[:8192]
    if not sample:
        return False
    if any(sample.startswith(bom) for bom, _encoding in _BOMS):
        return True
    return b"\x00" not in sample and charset_normalizer.from_bytes(sample).best() is not None


def decode_text(data: bytes, *, file_name: str) -> str:
    """Text in UTF-8, UTF-16/32 with a BOM, or a legacy encoding (GBK, Big5, Shift-JIS, Windows-1252, ...)."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return data.decode(encoding, errors="replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if b"\x00" in data[:8192]:
        raise DocumentError(unsupported_sentence(file_name))
    best = charset_normalizer.from_bytes(data[:DETECTION_SAMPLE]).best()
    if best is None:
        raise DocumentError(
            _("Jarvis could not tell which character encoding “%(name)s” uses. Save it as UTF-8 and send it again.")
            % {"name": file_name}
        )
    logger.info("Decoding %s as %s", file_name, best.encoding)
    return data.decode(best.encoding, errors="replace")


def _csv_sections(text: str) -> list[Section]:
    lines = text.splitlines()
    if not lines:
        return []
    # Every chunk of a table keeps its column names, so a row found alone still says what its values mean.
    header = lines[0].strip()
    return [Section(text="\n".join(lines[1:]) or header, heading=header[:300])]


# --- Markdown and HTML --------------------------------------------------------------------------


def markdown_sections(text: str) -> list[Section]:
    """Sections split at the Markdown headings (as markdown-it-py parses them), each with its heading path."""
    from markdown_it import MarkdownIt

    lines = text.splitlines()
    tokens = MarkdownIt("commonmark").parse(text)
    headings: list[tuple[int, int, int, str]] = []  # first line, line after, level, title
    for index, token in enumerate(tokens):
        if token.type == "heading_open" and token.map:
            title = tokens[index + 1].content.strip() if index + 1 < len(tokens) else ""
            headings.append((token.map[0], token.map[1], int(token.tag[1]), title))
    sections: list[Section] = []
    path: list[tuple[int, str]] = []
    start = 0
    current = ""
    heading_only = False
    for first, after, level, title in headings:
        body = "\n".join(lines[start:first]).strip()
        if body and not heading_only:
            sections.append(Section(text=body, heading=current))
            start = first
        # A heading right after a heading joins the next section's text rather than standing alone.
        heading_only = not "\n".join(lines[after : _next_heading(headings, first)]).strip()
        path = [(lvl, name) for lvl, name in path if lvl < level] + [(level, title)]
        current = " › ".join(name for _lvl, name in path if name)[:500]
    body = "\n".join(lines[start:]).strip()
    if body:
        sections.append(Section(text=body, heading=current))
    return sections


def _next_heading(headings: list[tuple[int, int, int, str]], first: int) -> int | None:
    return next((start for start, _after, _level, _title in headings if start > first), None)


_BLOCKS = frozenset(
    "p div li ul ol tr table section article header footer main nav aside blockquote pre dt dd figure "
    "figcaption br hr form fieldset address details summary".split()
)


def _html_to_markdown(text: str) -> str:
    """The visible text of a page, its headings as Markdown headings and its blocks on lines of their own."""
    import lxml.html

    try:
        root = lxml.html.document_fromstring(text)
    except (ValueError, lxml.etree.ParserError):
        return ""
    for element in root.xpath("//script|//style|//noscript|//template|//head"):
        element.drop_tree()
    for element in list(root.iter()):
        if not isinstance(element.tag, str):
            continue
        tag = element.tag.lower()
        if len(tag) == 2 and tag[0] == "h" and tag[1] in "123456":
            title = " ".join(element.text_content().split())
            for child in list(element):
                element.remove(child)
            element.text = f"\n\n{'#' * int(tag[1])} {title}\n\n"
        elif tag in _BLOCKS:
            element.tail = "\n" + (element.tail or "")
        elif tag in ("td", "th"):
            element.tail = " | " + (element.tail or "")
    lines = [" ".join(line.split()) for line in root.text_content().splitlines()]
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip()


# --- PDF ----------------------------------------------------------------------------------------


def _pdf(data: bytes, file_name: str, on_progress: Progress | None) -> Extracted:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise DocumentError(
                _(
                    "“%(name)s” is protected with a password, so Jarvis cannot read it. Remove the password "
                    "(print it to a new PDF, for example) and send it again."
                )
                % {"name": file_name}
            )
        pages = reader.pages
        total = len(pages)
    except DocumentError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, OSError, NotImplementedError) as exc:
        logger.info("Unreadable PDF %s: %s", file_name, exc)
        raise DocumentError(
            _("“%(name)s” is not a PDF Jarvis can open (it may be damaged). Export it again and send it.")
            % {"name": file_name}
        ) from exc
    headings = _pdf_outline(reader)
    sections: list[Section] = []
    heading = ""
    letters = 0
    for number in range(1, total + 1):
        heading = headings.get(number, heading)
        try:
            text = pages[number - 1].extract_text() or ""
        except Exception as exc:  # one broken page must not lose the rest of the document
            logger.info("Page %d of %s could not be read: %s", number, file_name, exc)
            text = ""
        text = text.replace("\x00", "").strip()
        letters += sum(1 for c in text if c.isalnum())
        if text:
            sections.append(Section(text=text, page=number, heading=heading))
        if on_progress is not None:
            on_progress(number, total)
    if letters < MIN_TEXT_CHARS:
        raise DocumentError(
            _(
                "“%(name)s” has no text Jarvis can read: its pages look like scanned images. Send a PDF with a "
                "text layer (run it through OCR first), or paste the text."
            )
            % {"name": file_name}
        )
    return Extracted(kind="pdf", sections=sections, pages=total)


def _pdf_outline(reader: object) -> dict[int, str]:
    """The heading path in force from each page on where the outline (bookmarks) starts one."""
    found: dict[int, str] = {}

    def walk(items: list, path: list[str]) -> None:
        last: list[str] = path
        for item in items:
            if isinstance(item, list):
                walk(item, last)
                continue
            try:
                number = reader.get_destination_page_number(item) + 1
            except Exception:  # noqa: S112 - an outline entry pointing nowhere is simply skipped
                continue
            last = [*path, str(item.title).strip()]
            found.setdefault(number, " › ".join(t for t in last if t)[:500])

    try:
        walk(reader.outline, [])
    except Exception as exc:
        logger.info("PDF outline unreadable: %s", exc)
    return found


# --- DOCX ---------------------------------------------------------------------------------------


def _check_archive(data: bytes, file_name: str) -> None:
    """Refuse an archive whose parts would unpack to far more than is plausible (a zip bomb)."""
    bomb = DocumentError(
        _(
            "“%(name)s” unpacks to far more data than a document holds, which is how archive bombs work; Jarvis "
            "did not open it. If it is a real document, save it again as .docx or PDF."
        )
        % {"name": file_name}
    )
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise DocumentError(
            _("“%(name)s” is not a Word document Jarvis can open (it may be damaged). Save it again and send it.")
            % {"name": file_name}
        ) from exc
    total = 0
    for info in infos:
        total += info.file_size
        if total > MAX_UNPACKED_BYTES:
            raise bomb
        if info.file_size > 1024 * 1024 and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            raise bomb


def _docx(data: bytes, file_name: str) -> Extracted:
    import docx
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    _check_archive(data, file_name)
    try:
        document = docx.Document(io.BytesIO(data))
    except Exception as exc:
        raise DocumentError(
            _("“%(name)s” is not a Word document Jarvis can open (it may be damaged). Save it again and send it.")
            % {"name": file_name}
        ) from exc
    sections: list[Section] = []
    path: list[tuple[int, str]] = []
    heading = ""
    lines: list[str] = []

    body = False

    def flush() -> None:
        text = "\n".join(lines).strip()
        if text:
            sections.append(Section(text=text, heading=heading))
        lines.clear()

    for block in document.iter_inner_content():
        if isinstance(block, Paragraph):
            text = block.text.strip()
            level = _heading_level(block)
            if level and text:
                # A heading right after a heading joins the next section rather than standing alone.
                if body:
                    flush()
                body = False
                path = [(lvl, name) for lvl, name in path if lvl < level] + [(level, text)]
                heading = " › ".join(name for _lvl, name in path)[:500]
                lines.append(text)
            elif text:
                lines.append(text)
                body = True
        elif isinstance(block, Table):
            for row in block.rows:
                cells = [" ".join(cell.text.split()) for cell in row.cells]
                # Merged cells repeat; once is enough.
                unique = [cell for index, cell in enumerate(cells) if cell and cell not in cells[:index]]
                if unique:
                    lines.append(" | ".join(unique))
                    body = True
    flush()
    return Extracted(kind="docx", sections=sections)


def _heading_level(paragraph: object) -> int:
    try:
        name = (paragraph.style.name or "").lower()
    except (AttributeError, KeyError):
        return 0
    if name == "title":
        return 1
    if name.startswith("heading"):
        digits = "".join(c for c in name if c.isdigit())
        return int(digits) if digits else 1
    return 0
