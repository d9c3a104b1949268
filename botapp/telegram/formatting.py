"""Turns the model's Markdown into Telegram HTML and cuts long answers into messages that fit.

Pure functions, no Django. Three entry points:

* `markdown_to_telegram_html(text)`: Markdown (CommonMark + tables + strikethrough) to the HTML subset
  Telegram's `parse_mode=HTML` accepts. Every tag it writes is opened and closed in order, and all text is
  escaped, so the result parses even for half-streamed input (an unclosed fence, a cut-off `**`).
* `split_message(text, limit)`: cuts Markdown *source* into parts of at most `limit` characters at the
  best boundary available (paragraph, then line, then space, then anywhere). A code fence that spans a
  cut is closed at the end of one part and reopened with the same info string at the start of the next.
  `split_spans` gives the same cut as source offsets, for callers that need to map parts back.
* `render_parts(text, limit)`: `(html, plain)` pairs ready to send, each within `limit` characters of
  visible text (what Telegram counts after parsing entities); `plain` is the part's Markdown source, the
  fallback for when Telegram rejects the HTML anyway.

Lengths are counted in Unicode code points, as Telegram counts the 4096-character message limit.
"""

from __future__ import annotations

import bisect
import re
from typing import NamedTuple

from markdown_it import MarkdownIt
from markdown_it.tree import SyntaxTreeNode

__all__ = [
    "TELEGRAM_MESSAGE_LIMIT",
    "Span",
    "markdown_to_telegram_html",
    "render_parts",
    "split_message",
    "split_spans",
    "visible_text",
]

TELEGRAM_MESSAGE_LIMIT = 4096

# Raw HTML in the model's answer is shown as text, never passed through: Telegram rejects most tags.
_md = MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])

_LINK_SCHEMES = frozenset({"http", "https", "tg", "mailto"})
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
# Telegram puts the language into an attribute; anything odder than this is dropped, not escaped.
_LANGUAGE_RE = re.compile(r"^[A-Za-z0-9_+#.-]{1,32}$")
_INLINE_TAGS = {"strong": "b", "em": "i", "s": "s"}
_HORIZONTAL_RULE = "————————"
_TAG_RE = re.compile(r"<[^>]*>")


# --- Markdown to HTML ---------------------------------------------------------------------------


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _escape_attr(text: str) -> str:
    return _escape(text).replace('"', "&quot;")


def _allowed_url(url: str) -> bool:
    match = _SCHEME_RE.match(url)
    return bool(match) and match.group(1).lower() in _LINK_SCHEMES


def _plain(node: SyntaxTreeNode) -> str:
    """The text a reader sees in an inline subtree, without any markup."""
    if node.type in ("text", "code_inline", "html_inline"):
        return node.content
    if node.type in ("softbreak", "hardbreak"):
        return " "
    return "".join(_plain(child) for child in node.children)


def _inline(node: SyntaxTreeNode) -> str:
    out: list[str] = []
    for child in node.children:
        kind = child.type
        if kind == "text" or kind == "html_inline":
            out.append(_escape(child.content))
        elif kind in ("softbreak", "hardbreak"):
            out.append("\n")
        elif kind == "code_inline":
            out.append(f"<code>{_escape(child.content)}</code>")
        elif kind in _INLINE_TAGS:
            tag = _INLINE_TAGS[kind]
            out.append(f"<{tag}>{_inline(child)}</{tag}>")
        elif kind == "link":
            href = str(child.attrs.get("href", ""))
            inner = _inline(child)
            if _allowed_url(href):
                label = inner if inner.strip() else _escape(href)
                out.append(f'<a href="{_escape_attr(href)}">{label}</a>')
            else:
                out.append(inner)
        elif kind == "image":
            src = str(child.attrs.get("src", ""))
            alt = _plain(child)
            if _allowed_url(src):
                out.append(f'<a href="{_escape_attr(src)}">{_escape(alt or src)}</a>')
            else:
                out.append(_escape(alt))
        elif child.children:
            out.append(_inline(child))
        else:
            out.append(_escape(child.content))
    return "".join(out)


def _code_block(node: SyntaxTreeNode) -> str:
    code = node.content.removesuffix("\n")
    if not code:
        return ""
    language = node.info.split()[0] if node.type == "fence" and node.info.strip() else ""
    if _LANGUAGE_RE.match(language):
        return f'<pre><code class="language-{_escape_attr(language)}">{_escape(code)}</code></pre>'
    return f"<pre>{_escape(code)}</pre>"


def _table(node: SyntaxTreeNode) -> str:
    rows: list[list[str]] = []
    aligns: list[str] = []
    for section in node.children:
        for row in section.children:
            cells = [_plain(cell.children[0]) if cell.children else "" for cell in row.children]
            if not rows:
                aligns = [str(cell.attrs.get("style", "")) for cell in row.children]
            rows.append(cells)
    if not rows:
        return ""
    columns = max(len(row) for row in rows)
    widths = [max((len(row[c]) for row in rows if c < len(row)), default=0) for c in range(columns)]

    def line(row: list[str]) -> str:
        cells = []
        for c, width in enumerate(widths):
            cell = row[c] if c < len(row) else ""
            align = aligns[c] if c < len(aligns) else ""
            if "right" in align:
                cells.append(cell.rjust(width))
            elif "center" in align:
                cells.append(cell.center(width))
            else:
                cells.append(cell.ljust(width))
        return " | ".join(cells).rstrip()

    lines = [line(rows[0]), "-+-".join("-" * width for width in widths)]
    lines.extend(line(row) for row in rows[1:])
    return f"<pre>{_escape(chr(10).join(lines))}</pre>"


def _list(node: SyntaxTreeNode, depth: int, in_quote: bool) -> str:
    ordered = node.type == "ordered_list"
    start = int(node.attrs.get("start", 1)) if ordered else 1
    indent = "  " * depth
    lines: list[str] = []
    for number, item in enumerate(node.children, start=start):
        marker = f"{number}. " if ordered else "• "
        body = "\n".join(filter(None, (_block(child, depth + 1, in_quote) for child in item.children)))
        lines.append(f"{indent}{marker}{body}")
    return "\n".join(lines)


def _blocks(nodes: list[SyntaxTreeNode], depth: int, in_quote: bool) -> str:
    return "\n\n".join(filter(None, (_block(node, depth, in_quote) for node in nodes)))


def _block(node: SyntaxTreeNode, depth: int, in_quote: bool) -> str:
    kind = node.type
    if kind == "paragraph":
        return _inline(node.children[0]) if node.children else ""
    if kind == "inline":
        return _inline(node)
    if kind == "heading":
        text = _inline(node.children[0]) if node.children else ""
        return f"<b>{text}</b>" if text.strip() else ""
    if kind in ("fence", "code_block"):
        return _code_block(node)
    if kind in ("bullet_list", "ordered_list"):
        return _list(node, depth, in_quote)
    if kind == "blockquote":
        inner = _blocks(node.children, depth, True)
        # Telegram does not nest blockquotes, so only the outermost one gets the tag.
        return inner if in_quote or not inner else f"<blockquote>{inner}</blockquote>"
    if kind == "table":
        return _table(node)
    if kind == "hr":
        return _HORIZONTAL_RULE
    if node.children:
        return _blocks(node.children, depth, in_quote)
    return _escape(node.content)


def markdown_to_telegram_html(text: str) -> str:
    """Convert Markdown to HTML that Telegram's `parse_mode=HTML` accepts (balanced, escaped, known tags)."""
    root = SyntaxTreeNode(_md.parse(text))
    return _blocks(root.children, 0, False).strip("\n")


def visible_text(html: str) -> str:
    """The text Telegram shows for HTML this module produced: tags dropped, entities decoded."""
    text = _TAG_RE.sub("", html)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"').replace("&amp;", "&")


# --- Splitting ----------------------------------------------------------------------------------


class Span(NamedTuple):
    """One part of a split: `source[start:end]` plus the fence lines added around it."""

    start: int
    end: int
    prefix: str = ""
    suffix: str = ""

    def render(self, source: str) -> str:
        return f"{self.prefix}{source[self.start : self.end]}{self.suffix}"


class _Fence(NamedTuple):
    marker: str
    info: str


_FENCE_LINE_RE = re.compile(r" {0,3}(`{3,}|~{3,})(.*)$")


class _FenceMap:
    """Where code fences open and close in a source text, so any offset maps to "inside which fence"."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.ends: list[int] = []  # end offset (the newline's index) of each line that changes state
        self.states: list[_Fence | None] = []
        state: _Fence | None = None
        pos = 0
        while True:
            newline = text.find("\n", pos)
            end = len(text) if newline < 0 else newline
            match = _FENCE_LINE_RE.match(text, pos, end)
            if match:
                marker, rest = match.group(1), match.group(2)
                if state is None:
                    # A backtick fence's info string may not contain backticks (CommonMark 4.5).
                    if not (marker[0] == "`" and "`" in rest):
                        state = _Fence(marker, rest.strip())
                        self.ends.append(end)
                        self.states.append(state)
                elif marker[0] == state.marker[0] and len(marker) >= len(state.marker) and not rest.strip():
                    state = None
                    self.ends.append(end)
                    self.states.append(state)
            if newline < 0:
                break
            pos = newline + 1

    def at(self, offset: int) -> _Fence | None:
        """The fence open once every line ending at or before `offset` has been read."""
        index = bisect.bisect_right(self.ends, offset) - 1
        return self.states[index] if index >= 0 else None

    def awkward_cut(self, cut: int, resume: int) -> bool:
        """Whether cutting at `cut` leaves an empty code block on either side of the split."""
        index = bisect.bisect_right(self.ends, cut) - 1
        if index < 0 or self.states[index] is None:
            return False
        if self.ends[index] == cut:
            return True  # the part would end right after the opening fence line
        if index + 1 < len(self.ends):
            closing_end = self.ends[index + 1]
            closing_start = self.text.rfind("\n", 0, closing_end) + 1
            return closing_start == resume  # the next part would start with the closing fence line
        return False


def _fence_lines(fence: _Fence | None, limit: int) -> tuple[str, str]:
    """The lines that reopen and close `fence` around a part, shortened or dropped when `limit` is tiny."""
    if fence is None:
        return "", ""
    for opening in (f"{fence.marker}{fence.info}\n", f"{fence.marker}\n"):
        closing = f"\n{fence.marker}"
        if len(opening) + len(closing) <= limit // 2:
            return opening, closing
    return "", ""


_SEPARATORS = ("\n\n", "\n", " ")


def _find_cut(text: str, fences: _FenceMap, start: int, end: int) -> tuple[int, int]:
    """Best place to end a part that must lie within `text[start:end]`: (cut, length of separator)."""
    halfway = start + (end - start) // 2
    for floor, careful in ((halfway, True), (start + 1, True), (start + 1, False)):
        for separator in _SEPARATORS:
            high = end + len(separator)
            while True:
                cut = text.rfind(separator, floor, high)
                if cut < floor:
                    break
                if not careful or not fences.awkward_cut(cut, cut + len(separator)):
                    return cut, len(separator)
                high = cut + len(separator) - 1
    return end, 0


def split_spans(text: str, limit: int = TELEGRAM_MESSAGE_LIMIT) -> list[Span]:
    """Plan the split of `text` into parts of at most `limit` characters; see `split_message`."""
    if limit < 1:
        raise ValueError("limit must be positive")
    fences = _FenceMap(text)
    spans: list[Span] = []
    pos = 0
    while pos < len(text):
        prefix, _ = _fence_lines(fences.at(pos), limit)
        budget = limit - len(prefix)
        if len(text) - pos <= budget:
            spans.append(Span(pos, len(text), prefix, ""))
            break
        reserve = 0
        while True:
            cut, separator = _find_cut(text, fences, pos, pos + budget - reserve)
            _, suffix = _fence_lines(fences.at(cut), limit)
            if len(prefix) + (cut - pos) + len(suffix) <= limit:
                break
            reserve = max(reserve + 1, len(suffix))
        spans.append(Span(pos, cut, prefix, suffix))
        pos = cut + separator
    # Telegram refuses blank messages; whitespace between cuts is the only thing dropped.
    return [span for span in spans if text[span.start : span.end].strip()]


def split_message(text: str, limit: int = TELEGRAM_MESSAGE_LIMIT) -> list[str]:
    """Split Markdown/plain `text` into parts of at most `limit` characters without losing content.

    Cuts prefer paragraph breaks, then line breaks, then spaces, and cut a word only as a last resort.
    The separator at a cut (a blank line, a newline or a space) is dropped; everything else is kept, in
    order, exactly once. A code fence open at a cut is closed at the end of the part and reopened with the
    same marker and info string at the start of the next. Blank parts are left out, so blank input gives [].
    """
    return [span.render(text) for span in split_spans(text, limit)]


# --- Rendering ----------------------------------------------------------------------------------


def _render(source: str) -> tuple[str, str]:
    """HTML for a part and the text it shows; source text when the Markdown would show nothing at all."""
    html = markdown_to_telegram_html(source)
    shown = visible_text(html)
    if not shown.strip():
        return _escape(source), source
    return html, shown


def _first_piece(source: str, limit: int) -> tuple[str, str, list[Span]]:
    """The longest leading part of `source` whose HTML shows at most `limit` characters: (html, part, spans)."""
    spans = split_spans(source, limit)
    part = spans[0].render(source)
    html, shown = _render(part)
    if len(shown) <= limit:
        return html, part, spans
    # Rendering can show more than the source (padded tables, renumbered lists, rules): search for the
    # largest source budget whose first part still fits.
    best: tuple[str, str, list[Span]] | None = None
    low, high = 1, min(len(part), limit) - 1
    while low <= high:
        middle = (low + high) // 2
        candidate_spans = split_spans(source, middle)
        candidate = candidate_spans[0].render(source)
        candidate_html, candidate_shown = _render(candidate)
        if len(candidate_shown) <= limit:
            best, low = (candidate_html, candidate, candidate_spans), middle + 1
        else:
            high = middle - 1
    # Nothing renders small enough only for absurd limits; the part's own text always fits.
    return best or (_escape(part), part, spans)


def render_parts(text: str, limit: int = TELEGRAM_MESSAGE_LIMIT) -> list[tuple[str, str]]:
    """Split and render `text` into `(html, plain)` message pairs, each showing at most `limit` characters.

    `html` is for `parse_mode=HTML`; `plain` is the same part as Markdown source (at most `limit`
    characters too), to send without a parse mode if Telegram rejects the HTML. Blank input gives [].
    """
    pairs: list[tuple[str, str]] = []
    source = text
    while source.strip():
        html, part, spans = _first_piece(source, limit)
        pairs.append((html, part))
        rest = spans[1].prefix + source[spans[1].start :] if len(spans) > 1 else ""
        if len(rest) >= len(source):  # only a reopened fence can grow it; never loop on that
            pairs.extend((_escape(piece), piece) for piece in split_message(rest, limit))
            break
        source = rest
    return pairs
