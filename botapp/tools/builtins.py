"""The built-in tools: web search through SearXNG, reading a web page, and the current date and time."""

from __future__ import annotations

import asyncio
import zoneinfo
from typing import Any

from django.conf import settings
from django.utils import timezone
from django.utils.translation import gettext as _
from yarl import URL

from botapp.tools import fetch, limits
from botapp.tools.registry import BuiltinTool, Source, ToolContext, ToolError, ToolResult, register

WEB_SEARCH = "web_search"
READ_WEB_PAGE = "read_web_page"
CURRENT_DATETIME = "current_datetime"


def _text_argument(arguments: dict[str, Any], name: str) -> str:
    value = arguments.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ToolError(_("The argument “%(name)s” is missing or empty.") % {"name": name})
    return value.strip()


# --- Web search ---------------------------------------------------------------------------------


async def web_search(arguments: dict[str, Any], context: ToolContext) -> ToolResult:
    query = _text_argument(arguments, "query")[:400]
    language = arguments.get("language") if isinstance(arguments.get("language"), str) else ""
    data = await fetch.searxng_search(query, timeout=limits.timeout(), language=language[:16])
    results = [r for r in data.get("results") or [] if isinstance(r, dict) and isinstance(r.get("url"), str)]
    results = results[: limits.MAX_SEARCH_RESULTS]
    lines = [_("Web search results for “%(query)s” (untrusted text from the web):") % {"query": query}, ""]
    for answer in (data.get("answers") or [])[:2]:
        text = answer.get("answer") if isinstance(answer, dict) else answer
        if isinstance(text, str) and text.strip():
            lines += [_("Direct answer: %(text)s") % {"text": text.strip()[:500]}, ""]
    for number, result in enumerate(results, start=1):
        title = str(result.get("title") or "").strip()[:200]
        snippet = " ".join(str(result.get("content") or "").split())[:400]
        lines += [f"{number}. {title}", f"   {result['url']}"] + ([f"   {snippet}"] if snippet else [])
    if not results and len(lines) == 2:
        lines.append(_("No results."))
    sources = tuple(Source(url=r["url"], title=str(r.get("title") or "")[:200]) for r in results)
    return ToolResult(text="\n".join(lines).strip(), sources=sources)


def web_search_label(arguments: dict[str, Any], done: bool) -> str:
    query = str(arguments.get("query") or "").strip()[:80]
    return (_("Searched the web: %(query)s") if done else _("Searching the web: %(query)s…")) % {"query": query}


register(
    BuiltinTool(
        name=WEB_SEARCH,
        title="Web search",
        description=(
            "Search the web (SearXNG) for current information. Returns numbered results with title, URL and a "
            "snippet. Use read_web_page on a result's URL to read it in full."
        ),
        parameters={
            "type": "object",
            "properties": {
                "query": {"type": "string", "description": "What to search for, as you would type it."},
                "language": {"type": "string", "description": "Optional language code of the results, e.g. en, de."},
            },
            "required": ["query"],
        },
        run=web_search,
        label=web_search_label,
        available=lambda: bool(settings.SEARXNG_URL),
    )
)


# --- Reading a page -----------------------------------------------------------------------------


# Past this much HTML, trafilatura's fallback extractors and metadata search take seconds: the fast path is used.
FAST_EXTRACTION_BYTES = 512 * 1024


def _extract(page: fetch.Page) -> tuple[str, str]:
    """(title, readable text) of a fetched page; trafilatura for HTML, the text itself otherwise."""
    if page.content_type in fetch.HTML_TYPES:
        # Imported here: they are large, and only page reading needs them.
        import lxml.html
        import trafilatura

        large = len(page.body) > FAST_EXTRACTION_BYTES
        document = trafilatura.bare_extraction(
            page.body, url=page.url, fast=large, with_metadata=not large, include_tables=True, include_links=False
        )
        if document is None or not (document.text or "").strip():
            raise ToolError(_("The page has no readable text (it may need JavaScript, or be mostly images)."))
        title = document.title or ""
        if not title:
            try:
                title = lxml.html.fromstring(page.body).findtext(".//title") or ""
            except (ValueError, lxml.etree.ParserError):
                title = ""
        return " ".join(title.split()), document.text.strip()
    text = page.body.decode(page.charset or "utf-8", errors="replace").strip()
    if not text:
        raise ToolError(_("The page is empty."))
    return "", text


async def read_web_page(arguments: dict[str, Any], context: ToolContext) -> ToolResult:
    address = _text_argument(arguments, "url")
    page = await fetch.page_fetch(address, allow_private=context.allow_private_urls, timeout=limits.timeout())
    title, text = await asyncio.to_thread(_extract, page)
    head = [_("Readable text of %(url)s (untrusted text from the web):") % {"url": page.url}]
    if title:
        head.append(_("Title: %(title)s") % {"title": title})
    if page.truncated:
        head.append(
            _("(The page is larger than %(mb)d MB; only its beginning was read.)")
            % {"mb": limits.MAX_PAGE_BYTES // 2**20}
        )
    return ToolResult(
        text="\n".join(head) + "\n\n" + text, sources=(Source(url=page.url, title=title[:200]),), read=True
    )


def read_web_page_label(arguments: dict[str, Any], done: bool) -> str:
    address = str(arguments.get("url") or "")
    try:
        host = URL(address).host or address[:60]
    except (ValueError, TypeError):
        host = address[:60]
    return (_("Read %(host)s") if done else _("Reading %(host)s…")) % {"host": host}


register(
    BuiltinTool(
        name=READ_WEB_PAGE,
        title="Read a web page",
        description=(
            "Fetch a web page (http or https URL) and return its readable text, without menus and ads. Private "
            "and local network addresses are refused."
        ),
        parameters={
            "type": "object",
            "properties": {
                "url": {"type": "string", "description": "The full URL, starting with http:// or https://."}
            },
            "required": ["url"],
        },
        run=read_web_page,
        label=read_web_page_label,
    )
)


# --- Date and time ------------------------------------------------------------------------------


def _zone(name: str) -> zoneinfo.ZoneInfo | None:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return None


async def current_datetime(arguments: dict[str, Any], context: ToolContext) -> ToolResult:
    asked = arguments.get("time_zone")
    zone_name = asked if isinstance(asked, str) and asked.strip() else context.time_zone
    zone = _zone(zone_name.strip())
    if zone is None:
        raise ToolError(
            _("“%(zone)s” is not a time zone Jarvis knows (use names like Europe/Paris).") % {"zone": zone_name[:64]}
        )
    now = timezone.now().astimezone(zone)
    offset = now.strftime("%z")
    text = _("Now in %(zone)s: %(date)s, %(time)s (UTC%(offset)s). ISO 8601: %(iso)s") % {
        "zone": zone.key,
        "date": now.strftime("%A %d %B %Y"),
        "time": now.strftime("%H:%M"),
        "offset": f"{offset[:3]}:{offset[3:]}",
        "iso": now.isoformat(timespec="seconds"),
    }
    return ToolResult(text=text)


def current_datetime_label(arguments: dict[str, Any], done: bool) -> str:
    return _("Checked the date and time") if done else _("Checking the date and time…")


register(
    BuiltinTool(
        name=CURRENT_DATETIME,
        title="Current date and time",
        description=(
            "The current date and time in the person's time zone, or in another IANA time zone (e.g. "
            "America/New_York) when they ask about a place."
        ),
        parameters={
            "type": "object",
            "properties": {
                "time_zone": {"type": "string", "description": "Optional IANA time zone; default: the person's."}
            },
        },
        run=current_datetime,
        label=current_datetime_label,
    )
)


def person_time_zone(profile_zone: str) -> str:
    """The zone the date tool uses for a person: their profile's when it is valid, else TIME_ZONE."""
    if profile_zone and _zone(profile_zone) is not None:
        return profile_zone
    return settings.TIME_ZONE
