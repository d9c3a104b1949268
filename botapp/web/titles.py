"""What a conversation is called in the list, the heading and the tab: its title, or its first question."""

from __future__ import annotations

from django.utils.translation import gettext as _

from botapp.web.markdown import markdown_to_text

# Long enough for a list entry and a heading; longer first questions end with an ellipsis at a word.
TITLE_CHARS = 60
# A cut looks for a space this far back before giving up and cutting inside a word (Chinese has no spaces).
WORD_BREAK_REACH = 20


def display_title(title: str, first_question: str | None) -> str:
    """The title; untitled, the first question as plain words (no Markdown), cut at a word; else "New conversation"."""
    if title:
        return title
    text = markdown_to_text(first_question or "")
    if not text:
        return _("New conversation")
    return shorten(text, TITLE_CHARS)


def shorten(text: str, limit: int) -> str:
    """`text` cut to about `limit` characters at a word boundary, with an ellipsis when cut."""
    if len(text) <= limit:
        return text
    cut = text[:limit]
    space = cut.rfind(" ")
    if space >= limit - WORD_BREAK_REACH and not text[limit].isspace():
        cut = cut[:space]
    return cut.rstrip(" ,.;:!?-–—") + "…"
