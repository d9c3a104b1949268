"""Markdown to Telegram HTML, and splitting long answers: checked against the fake server's HTML parser."""

from __future__ import annotations

import random
import re

import pytest
from telegram import Bot

from botapp.telegram.formatting import (
    markdown_to_telegram_html,
    render_parts,
    split_message,
    split_spans,
    visible_text,
)
from tests.fakes.telegram_server import FakeTelegram, parse_telegram_html, trim_text

WORDS = [
    "the", "model", "answers", "with", "Markdown", "a<b", "x&y", "AT&T", "1 > 0", "&amp;", "&lt;tag&gt;",
    "<script>", "</b>", "<b>", '"quoted"', "it's", "**", "__", "_", "*", "`", "~~", "[", "](", ")", "#",
    "😀", "ünïcödé", "中文", "https://example.com/a?b=1&c=2", "@alice", "/start", "\\*", "|", "-", "1.",
]  # fmt: skip
HOSTILE = [
    "<script>alert('x')</script>",
    "a < b & c > d",
    "&amp; &lt; &#x41; &#0; &bogus; &",
    "**unclosed bold",
    "`unclosed code",
    "[broken](http://",
    "[js](javascript:alert(1)) [data](data:text/html,hi) [rel](/x) [ftp](ftp://x)",
    '[quote](https://example.com/"onmouseover="x)',
    "![img](https://example.com/i.png) ![](https://example.com/empty.png) ![local](x.png)",
    "<b>not a tag</b> <a href='x'>y</a> <br> <pre>",
    "<!-- comment --> <?php ?> <![CDATA[x]]>",
    "~~strike~~ __bold__ *it* ***both*** `code <x>`",
    "Header\n===",
    "> > nested quote\n> back",
    "- [ ] task\n- [x] done",
    "***\n---\n___",
    "\t\ttabbed\n    indented code",
    "<https://autolink.example/x?y=1&z=2> <mailto:me@example.com>",
    "line one  \nhard break\\\nanother",
]
LANGUAGES = ["", "python", "js", "c++", "objective-c", "weird lang", "<b>", 'a"b']


def words(rng: random.Random, low: int = 1, high: int = 12) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


def fence(rng: random.Random, lines: int | None = None) -> str:
    body = "\n".join(
        rng.choice(["x = a < b and c > d", "if (a && b) {", "    return '<tag>' & 1;", "", "}", words(rng)])
        for _ in range(lines or rng.randint(1, 8))
    )
    return f"```{rng.choice(LANGUAGES)}\n{body}\n```"


def table(rng: random.Random) -> str:
    columns = rng.randint(1, 4)
    rows = ["| " + " | ".join(words(rng, 1, 2).replace("|", "") for _ in range(columns)) + " |"]
    rows.append("|" + "|".join(rng.choice([":--", "--:", ":-:", "---"]) for _ in range(columns)) + "|")
    rows += ["| " + " | ".join(words(rng, 0, 3).replace("|", "") for _ in range(columns)) + " |" for _ in range(3)]
    return "\n".join(rows)


BLOCKS = [
    lambda rng: "#" * rng.randint(1, 6) + " " + words(rng, 1, 5),
    lambda rng: words(rng, 5, 60),
    lambda rng: "\n".join(f"- {words(rng)}" for _ in range(rng.randint(1, 5))),
    lambda rng: "\n".join(f"{i + 1}. {words(rng)}" for i in range(rng.randint(1, 12))),
    lambda rng: "- outer\n  - inner " + words(rng) + "\n    1. deepest",
    fence,
    lambda rng: "> " + words(rng, 3, 20),
    table,
    lambda rng: rng.choice(HOSTILE),
    lambda rng: f"Read [the {words(rng, 1, 2)}](https://example.com/{rng.randint(1, 99)}?q=a&b) now.",
]


def document(rng: random.Random, blocks: int | None = None) -> str:
    parts = [rng.choice(BLOCKS)(rng) for _ in range(blocks or rng.randint(1, 12))]
    text = rng.choice(["\n\n", "\n", "\n\n\n"]).join(parts)
    if rng.random() < 0.3:
        text = text[: rng.randint(0, len(text))]  # a stream cut anywhere
    return text


def documents(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [document(rng) for _ in range(count)]


def telegram_visible(html: str) -> str:
    """What Telegram would show for `html`; raises if Telegram would refuse it."""
    text, entities = parse_telegram_html(html, strict=True)
    return trim_text(text, entities)[0]


_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})(.*)")


def open_fence_at_end(text: str) -> str | None:
    """The CommonMark fence still open at the end of `text`, if any."""
    state: str | None = None
    for line in text.split("\n"):
        match = _FENCE.fullmatch(line)
        if not match:
            continue
        marker, rest = match.groups()
        if state is None and not (marker[0] == "`" and "`" in rest):
            state = marker
        elif state is not None and marker[0] == state[0] and len(marker) >= len(state) and not rest.strip():
            state = None
    return state


LONG_ANSWER = "\n\n".join(
    [
        "# A long answer",
        *(f"Paragraph {i}: " + "lorem ipsum dolor sit amet, " * 12 for i in range(25)),
        "```python\n" + "\n".join(f"def f{i}(x):\n    return x < {i} and x & 1" for i in range(250)) + "\n```",
        *(f"- item {i} with **bold** and `code`" for i in range(60)),
        "| name | value |\n|---|--:|\n" + "\n".join(f"| row {i} | {i * i} |" for i in range(40)),
    ]
)


# --- markdown_to_telegram_html ------------------------------------------------------------------


def test_generated_markdown_always_gives_html_telegram_accepts() -> None:
    """Hundreds of generated documents (hostile bits, cut streams) all convert to HTML that Telegram parses."""
    for text in documents(400, seed=1):
        html = markdown_to_telegram_html(text)
        try:
            parse_telegram_html(html, strict=True)
        except ValueError as exc:
            pytest.fail(f"{exc}\nsource: {text!r}\nhtml: {html!r}")


def test_every_prefix_of_a_stream_is_valid() -> None:
    """An answer cut after any character (mid-fence, mid-link, mid-table) still converts to valid HTML."""
    text = (
        "# Title\n\nSome **bold _nested_** text with `code` and [a link](https://example.com/?a=1&b=2).\n\n"
        "| a | b |\n|---|:-:|\n| 1 | 2 |\n\n> quoted <tag>\n\n1. one\n2. two\n   - sub\n\n"
        "```python\nprint('a < b & c')\n```\n\n~~gone~~ done"
    )
    for end in range(len(text) + 1):
        html = markdown_to_telegram_html(text[:end])
        parse_telegram_html(html, strict=True)


def test_hostile_input_is_shown_as_text() -> None:
    """Raw HTML and special characters from the model are escaped and shown literally, never interpreted."""
    html = markdown_to_telegram_html("<script>alert(1)</script> a < b & c > d <b>x</b>")
    assert "<script" not in html and "<b>x" not in html
    assert telegram_visible(html) == "<script>alert(1)</script> a < b & c > d <b>x</b>"


def test_inline_formatting() -> None:
    """Bold, italics, strikethrough and inline code map to Telegram's tags."""
    html = markdown_to_telegram_html("**b** *i* _j_ ~~s~~ `c<d>` ***both***")
    assert html == "<b>b</b> <i>i</i> <i>j</i> <s>s</s> <code>c&lt;d&gt;</code> <i><b>both</b></i>"


def test_fenced_code_keeps_language_and_content() -> None:
    """Fenced code becomes pre>code with the language; its text is escaped but otherwise untouched."""
    html = markdown_to_telegram_html("```python\nif a < b:\n    print('&')\n```")
    assert html == "<pre><code class=\"language-python\">if a &lt; b:\n    print('&amp;')</code></pre>"
    _, entities = parse_telegram_html(html)
    assert entities == [{"type": "pre", "offset": 0, "length": 24, "language": "python"}]
    assert markdown_to_telegram_html("```\nplain\n```") == "<pre>plain</pre>"
    assert markdown_to_telegram_html('```a"b <x>\ncode\n```') == "<pre>code</pre>"  # odd language dropped


def test_unclosed_fence_is_closed() -> None:
    """A fence still open when the stream stops renders as a complete code block."""
    html = markdown_to_telegram_html("Look:\n\n```js\nlet a = 1 < 2;\n")
    assert html == 'Look:\n\n<pre><code class="language-js">let a = 1 &lt; 2;</code></pre>'


def test_links_only_for_safe_schemes() -> None:
    """Links become <a href> only for http, https, tg and mailto; others keep just their text."""
    html = markdown_to_telegram_html(
        "[web](https://x.org/?a=1&b=2) [tg](tg://resolve?domain=x) [mail](mailto:a@b.c) "
        "[rel](/relative) [ftp](ftp://x.org/f) [js](javascript:alert(1))"
    )
    assert '<a href="https://x.org/?a=1&amp;b=2">web</a>' in html
    assert '<a href="tg://resolve?domain=x">tg</a>' in html and '<a href="mailto:a@b.c">mail</a>' in html
    assert html.count("<a ") == 3 and "rel" in html and "ftp" in html and "javascript" in html
    quoted = markdown_to_telegram_html('[q](https://x.org/"onclick="y)')
    assert '"onclick' not in quoted
    parse_telegram_html(quoted)


def test_images_become_links() -> None:
    """An image is shown as a link to it, labelled with its alt text (or its URL)."""
    assert markdown_to_telegram_html("![a cat](https://x.org/cat.png)") == '<a href="https://x.org/cat.png">a cat</a>'
    assert markdown_to_telegram_html("![](https://x.org/c.png)") == (
        '<a href="https://x.org/c.png">https://x.org/c.png</a>'
    )
    assert markdown_to_telegram_html("![local](cat.png)") == "local"


def test_blocks_headings_lists_quotes_rules() -> None:
    """Headings are bold lines, lists get bullets/numbers, quotes a blockquote (never nested), rules a line."""
    html = markdown_to_telegram_html(
        "# Title\n\n- a\n- b\n  - c\n\n3. three\n4. four\n\n> quote\n> > inner\n\n---\n\nend"
    )
    assert html == (
        "<b>Title</b>\n\n• a\n• b\n  • c\n\n3. three\n4. four\n\n"
        "<blockquote>quote\n\ninner</blockquote>\n\n————————\n\nend"
    )


def test_table_is_an_aligned_pre_block() -> None:
    """A table becomes a monospaced block with padded, aligned columns."""
    html = markdown_to_telegram_html("| Name | Qty |\n|:-----|----:|\n| apple <3 | 1 |\n| fig | 12 |")
    assert html == ("<pre>Name     | Qty\n---------+----\napple &lt;3 |   1\nfig      |  12</pre>")


# --- split_message ------------------------------------------------------------------------------


def check_split(text: str, limit: int) -> list[str]:
    """Assert the split invariants for one input and return the parts."""
    spans = split_spans(text, limit)
    parts = split_message(text, limit)
    assert parts == [span.render(text) for span in spans]
    position = 0
    for span, part in zip(spans, parts, strict=True):
        assert len(part) <= limit, (len(part), limit)
        # Only whitespace at the cut is dropped; everything else appears once, in order.
        assert text[position : span.start].strip() == "", (text, limit, position, span)
        assert span.start < span.end
        position = span.end
        # Whatever was added around the source slice is a fence line and nothing else.
        assert span.prefix == "" or _FENCE.fullmatch(span.prefix.rstrip("\n"))
        assert span.suffix == "" or _FENCE.fullmatch(span.suffix.lstrip("\n"))
    assert text[position:].strip() == ""
    return parts


def test_generated_splits_lose_nothing_and_respect_the_limit() -> None:
    """For many documents and limits, parts fit, and only whitespace at cut points goes missing."""
    rng = random.Random(2)
    for text in documents(300, seed=3):
        for limit in (rng.randint(40, 120), rng.randint(120, 600), 4096):
            check_split(text, limit)


def test_tiny_limits_still_make_progress() -> None:
    """Even absurdly small limits split every input into parts that fit, without looping forever."""
    for text in documents(60, seed=4):
        for limit in (1, 2, 5, 13):
            check_split(text, limit)


def test_fences_are_balanced_in_every_part() -> None:
    """A code block cut across parts is closed at the end of one and reopened with its language in the next."""
    rng = random.Random(5)
    for _ in range(150):
        text = "\n\n".join(rng.choice([fence(rng, rng.randint(5, 40)), words(rng, 5, 40)]) for _ in range(6))
        limit = rng.randint(60, 400)
        parts = check_split(text, limit)
        for index, part in enumerate(parts):
            assert open_fence_at_end(part) is None, (index, part)


def test_split_reopens_with_same_language() -> None:
    """The next part starts with the same fence marker and info string."""
    code = "\n".join(f"line {i}" for i in range(100))
    parts = split_message(f"Intro\n\n~~~~rust\n{code}\n~~~~\n\nOutro", 200)
    assert len(parts) > 3
    middle = [p for p in parts if "line 5" in p]
    assert all(p.endswith(("\n~~~~", "~~~~\n\nOutro")) for p in parts[1:-1])
    assert all(p.startswith("~~~~rust\n") for p in parts[2:])
    assert middle and "Outro" in parts[-1]


def test_split_prefers_paragraphs_then_lines_then_spaces() -> None:
    """Cuts land on paragraph breaks when there are any, then line breaks, then spaces, then anywhere."""
    paragraphs = "\n\n".join(["a" * 30, "b" * 30, "c" * 30])
    assert split_message(paragraphs, 70) == ["a" * 30 + "\n\n" + "b" * 30, "c" * 30]
    lines = "\n".join(["a" * 30, "b" * 30, "c" * 30]) + "\n\n" + "d" * 5
    assert split_message(lines, 70) == ["a" * 30 + "\n" + "b" * 30, "c" * 30 + "\n\n" + "d" * 5]
    spaced = " ".join(["word"] * 30)
    assert all(len(p) <= 50 and not p.startswith(" ") for p in split_message(spaced, 50))
    assert " ".join(split_message(spaced, 50)) == spaced
    assert split_message("x" * 10_000, 4096) == ["x" * 4096, "x" * 4096, "x" * 1808]


def test_split_short_and_blank_text() -> None:
    """Text within the limit is one part, unchanged; blank text gives no parts at all."""
    assert split_message("  hello\n\nworld  ") == ["  hello\n\nworld  "]
    assert split_message("") == [] and split_message(" \n\n \n") == []
    with pytest.raises(ValueError):
        split_message("x", 0)


def test_twenty_thousand_character_answer() -> None:
    """A 20,000+ character answer with prose, code, a list and a table splits into few valid parts."""
    assert len(LONG_ANSWER) > 20_000
    parts = check_split(LONG_ANSWER, 4096)
    assert len(parts) <= len(LONG_ANSWER) // 3000
    assert all(open_fence_at_end(part) is None for part in parts)
    assert sum(p.count("def f") for p in parts) == 250


# --- render_parts -------------------------------------------------------------------------------


def check_render(text: str, limit: int) -> list[tuple[str, str]]:
    pairs = render_parts(text, limit)
    for html, plain in pairs:
        shown = telegram_visible(html)
        assert shown, (text, html)
        assert len(shown) <= limit and len(plain) <= limit, (len(shown), len(plain), limit)
        assert visible_text(html).strip() == shown
    return pairs


def test_render_parts_fit_after_entity_parsing() -> None:
    """Every HTML part is accepted by Telegram's parser and shows at most `limit` characters; so does plain."""
    rng = random.Random(6)
    for text in documents(250, seed=7):
        for limit in (rng.randint(30, 200), 4096):
            check_render(text, limit)


def test_render_parts_long_answer() -> None:
    """The 20,000-character answer renders into HTML parts under 4096 visible characters each."""
    pairs = check_render(LONG_ANSWER, 4096)
    assert 5 <= len(pairs) <= 8
    assert "".join(plain for _, plain in pairs).count("def f") == 250


def test_render_parts_resplits_when_rendering_grows() -> None:
    """A table whose padding makes it longer than its source is re-split until each part fits."""
    rows = "\n".join(f"| {'x' if i % 2 else 'a much longer cell value'} | {i} |" for i in range(200))
    text = "| h | n |\n|---|---|\n" + rows
    first_source_part = split_message(text, 1000)[0]
    assert len(visible_text(markdown_to_telegram_html(first_source_part))) > 1000  # rendering grows
    pairs = check_render(text, 1000)
    assert pairs[0][0].startswith("<pre>h  ")  # the first part is still a table
    assert "".join(plain for _, plain in pairs).count("|") == text.count("|")


def test_render_parts_plain_is_the_markdown_source() -> None:
    """The fallback text of each part is that part's Markdown, so nothing is lost if HTML is refused."""
    [(html, plain)] = render_parts("**Hi** <there> & [x](https://x.org)")
    assert plain == "**Hi** <there> & [x](https://x.org)"
    assert html == '<b>Hi</b> &lt;there&gt; &amp; <a href="https://x.org">x</a>'
    assert render_parts("") == [] and render_parts("\n\n") == []


def test_render_parts_never_sends_an_empty_message() -> None:
    """Markdown that renders to nothing visible (an empty heading or fence) is sent as its source text."""
    assert render_parts("#") == [("#", "#")]
    assert render_parts("```\n```") == [("```\n```", "```\n```")]


@pytest.mark.asyncio
async def test_long_answer_goes_through_the_fake_server() -> None:
    """Sent with the real PTB Bot, every rendered part of a long answer is accepted by the fake Telegram."""
    token = "333333:formatting-test-token-dddddddddd"
    pairs = render_parts(LONG_ANSWER)
    with FakeTelegram(tokens=[token]) as fake:
        async with Bot(**fake.bot_kwargs(token)) as bot:
            for html, _ in pairs:
                await bot.send_message(77, html, parse_mode="HTML")
        messages = fake.messages(token, 77)
    assert len(messages) == len(pairs)
    assert all(len(m.text) <= 4096 for m in messages)
    assert sum(m.text.count("def f") for m in messages) == 250
