"""Markdown from people and the model to HTML that is safe to put in the page."""

from __future__ import annotations

import re
from functools import cache

import nh3
from django.utils.safestring import SafeString, mark_safe
from markdown_it import MarkdownIt

ALLOWED_TAGS = {
    "a", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "li", "ol", "p",
    "pre", "s", "strong", "table", "tbody", "td", "th", "thead", "tr", "ul",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "code": {"class"}, "ol": {"start"}}
URL_SCHEMES = {"http", "https", "mailto"}
# Syntax highlighting hooks only: `language-python`, never an arbitrary class that could restyle the page.
LANGUAGE_CLASS = re.compile(r"^language-[A-Za-z0-9_+#.-]{1,40}$")


@cache
def _parser() -> MarkdownIt:
    # html=False: raw HTML in the source is shown as text, not passed through.
    return MarkdownIt("commonmark", {"html": False, "breaks": True}).enable(["table", "strikethrough"])


def _keep_attribute(tag: str, attribute: str, value: str) -> str | None:
    if tag == "code" and attribute == "class":
        return value if LANGUAGE_CLASS.match(value) else None
    return value


def markdown_to_html(text: str) -> SafeString:
    """Render Markdown to HTML, then keep only an allowlist of tags, attributes and link schemes.

    The sanitizer runs on the rendered HTML, so whatever the parser lets through (or a future parser bug
    lets through) still cannot carry a script, an event handler or a `javascript:` link into the page.
    """
    html = _parser().render(text or "")
    cleaned = nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        attribute_filter=_keep_attribute,
        url_schemes=URL_SCHEMES,
        link_rel="noopener nofollow noreferrer",
        set_tag_attribute_values={"a": {"target": "_blank"}},
        strip_comments=True,
    )
    return mark_safe(cleaned)  # noqa: S308 - sanitized by nh3 just above
