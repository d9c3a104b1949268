"""Text sections into chunks of a few hundred tokens that never cross a page or a heading.

A chunk keeps where it came from (its page and heading path), so an answer can cite it, and the words of
its heading, so a search for a section title finds its text. Paragraphs stay whole when they fit; longer
ones are cut at sentence ends, and a sentence longer than a chunk at a character count.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from botapp.documents.extract import Section

TARGET_TOKENS = 350
MAX_TOKENS = 500
_PARAGRAPHS = re.compile(r"\n\s*\n")
_SENTENCES = re.compile(r"(?<=[.!?;。！？；])\s+|(?<=[。！？；])")

Counter = Callable[[str], int]


@dataclass
class Chunk:
    text: str
    heading: str
    page_start: int | None
    page_end: int | None
    token_count: int


def _pieces(text: str, count: Counter) -> Iterator[tuple[str, int, str]]:
    """(piece, tokens, separator before it) for the paragraphs of `text`, cut down to MAX_TOKENS."""
    for paragraph in _PARAGRAPHS.split(text):
        paragraph = paragraph.strip()
        if not paragraph:
            continue
        tokens = count(paragraph)
        if tokens <= MAX_TOKENS:
            yield paragraph, tokens, "\n\n"
            continue
        separator = "\n\n"
        for sentence in _SENTENCES.split(paragraph):
            sentence = sentence.strip()
            if not sentence:
                continue
            tokens = count(sentence)
            if tokens <= MAX_TOKENS:
                yield sentence, tokens, separator
            else:
                # No sentence ends to cut at (a table dump, a minified file): cut by length.
                step = max(int(len(sentence) * MAX_TOKENS / tokens * 0.9), 1)
                for start in range(0, len(sentence), step):
                    part = sentence[start : start + step]
                    yield part, count(part), separator
                    separator = ""
            separator = " "


def chunks_from(sections: list[Section], *, count: Counter) -> list[Chunk]:
    """The chunks of a document, in reading order."""
    chunks: list[Chunk] = []
    for section in sections:
        parts: list[str] = []
        tokens = 0
        for piece, piece_tokens, separator in _pieces(section.text, count):
            if parts and tokens + piece_tokens > TARGET_TOKENS:
                chunks.append(_chunk(parts, tokens, section))
                parts, tokens = [], 0
            parts.append((separator if parts else "") + piece)
            tokens += piece_tokens
        if parts:
            chunks.append(_chunk(parts, tokens, section))
    return chunks


def _chunk(parts: list[str], tokens: int, section: Section) -> Chunk:
    return Chunk(
        text="".join(parts),
        heading=section.heading,
        page_start=section.page,
        page_end=section.page,
        token_count=tokens,
    )
