"""Reading the web for tools, safely: no private, loopback or link-local addresses (redirects included),
only text content types, a size cap and a timeout; and the SearXNG JSON API.

Addresses are checked where the connection is made: aiohttp asks `GuardedResolver` for every host name it
connects to (each redirect hop too) and connects only to the addresses it returns, so a name cannot resolve
to a public address when checked and to a private one when used. Literal IP addresses in a URL never reach
a resolver, so `check_url` checks those before each request.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from django.conf import settings
from django.utils.translation import gettext as _
from yarl import URL

from botapp.tools import limits
from botapp.tools.registry import ToolError

logger = logging.getLogger(__name__)

READABLE_TYPES = frozenset(
    {
        "text/html",
        "application/xhtml+xml",
        "text/plain",
        "text/markdown",
        "text/csv",
        "application/json",
        "application/xml",
        "text/xml",
        "application/rss+xml",
        "application/atom+xml",
    }
)
HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
USER_AGENT = "Jarvis/1.0 (self-hosted assistant; reads a page when a person asks)"


class UrlRefused(ToolError):
    """The address is not one Jarvis may fetch (private network, loopback, link-local, not http)."""


def address_allowed(address: str) -> bool:
    """Whether Jarvis may connect to this IP address: public unicast only."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _refusal(host: str) -> UrlRefused:
    return UrlRefused(
        _(
            "Jarvis does not read %(host)s: it is on a private, loopback or link-local network, which tools may "
            "not reach."
        )
        % {"host": host}
    )


class GuardedResolver(AbstractResolver):
    """A resolver that refuses names with any private, loopback or link-local address."""

    def __init__(self, *, allow_private: bool) -> None:
        self._inner = aiohttp.ThreadedResolver()
        self.allow_private = allow_private
        self.refused: str | None = None

    async def _lookup(self, host: str, port: int, family: socket.AddressFamily) -> list[ResolveResult]:
        return await self._inner.resolve(host, port, family)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._lookup(host, port, family)
        if not self.allow_private and any(not address_allowed(result["host"]) for result in results):
            self.refused = host
            raise OSError(f"{host} resolves to an address tools may not reach")
        return results

    async def close(self) -> None:
        await self._inner.close()


def check_url(url: URL, *, allow_private: bool) -> None:
    """Refuse what is not http(s) with a host, and literal addresses tools may not reach."""
    if url.scheme not in ("http", "https") or not url.host:
        raise UrlRefused(_("Jarvis only reads http and https addresses, not “%(url)s”.") % {"url": str(url)[:200]})
    if allow_private:
        return
    host = url.raw_host or ""
    try:
        ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return  # a name: the resolver checks what it resolves to
    if not address_allowed(host.strip("[]")):
        raise _refusal(url.host)


@dataclass(frozen=True)
class Page:
    url: str
    content_type: str
    body: bytes
    charset: str | None
    truncated: bool


def _session(resolver: AbstractResolver, timeout: float) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(resolver=resolver, use_dns_cache=False, limit=4),
        timeout=aiohttp.ClientTimeout(total=timeout),
        headers={"User-Agent": USER_AGENT, "Accept": "text/html,application/xhtml+xml,text/plain;q=0.9,*/*;q=0.5"},
        trust_env=False,  # a proxy from the environment would make the checks above meaningless
    )


async def page_fetch(
    address: str, *, allow_private: bool, timeout: float, max_bytes: int = limits.MAX_PAGE_BYTES
) -> Page:
    """GET a page, following redirects one checked hop at a time; at most `max_bytes` of its body."""
    try:
        url = URL(address.strip())
    except (ValueError, TypeError) as exc:
        raise UrlRefused(_("“%(url)s” is not a web address.") % {"url": address[:200]}) from exc
    resolver = GuardedResolver(allow_private=allow_private)
    async with _session(resolver, timeout) as session:
        for _hop in range(limits.MAX_REDIRECTS + 1):
            check_url(url, allow_private=allow_private)
            try:
                async with session.get(url, allow_redirects=False) as response:
                    if response.status in REDIRECT_STATUSES and "Location" in response.headers:
                        url = url.join(URL(response.headers["Location"]))
                        continue
                    return await _read(response, url, max_bytes)
            except TimeoutError as exc:  # before OSError, which it is a kind of
                raise ToolError(_("%(host)s did not answer in time.") % {"host": url.host}) from exc
            except (aiohttp.ClientConnectorError, OSError) as exc:
                if resolver.refused:
                    raise _refusal(resolver.refused) from exc
                if isinstance(exc, aiohttp.ClientConnectorDNSError):
                    raise ToolError(_("The address %(host)s could not be found.") % {"host": url.host}) from exc
                raise ToolError(_("Jarvis could not connect to %(host)s.") % {"host": url.host}) from exc
            except aiohttp.ClientError as exc:
                raise ToolError(_("Reading %(host)s failed: the connection broke.") % {"host": url.host}) from exc
    raise ToolError(_("%(url)s redirects too many times.") % {"url": address[:200]})


async def _read(response: aiohttp.ClientResponse, url: URL, max_bytes: int) -> Page:
    if response.status >= 400:
        raise ToolError(
            _("%(host)s answered HTTP %(status)d for this page.") % {"host": url.host, "status": response.status}
        )
    content_type = (response.content_type or "application/octet-stream").lower()
    if content_type not in READABLE_TYPES:
        raise ToolError(
            _("The address gives a %(type)s file; Jarvis reads web pages and text only.") % {"type": content_type}
        )
    chunks: list[bytes] = []
    size = 0
    truncated = False
    async for chunk in response.content.iter_chunked(64 * 1024):
        chunks.append(chunk)
        size += len(chunk)
        if size > max_bytes:
            truncated = True
            break
    body = b"".join(chunks)[:max_bytes]
    return Page(url=str(url), content_type=content_type, body=body, charset=response.charset, truncated=truncated)


# --- SearXNG ------------------------------------------------------------------------------------


async def searxng_search(query: str, *, timeout: float, language: str = "") -> dict[str, Any]:
    """The JSON of SearXNG's /search for `query` (SEARXNG_URL is configured by the admin, so it is not guarded)."""
    base = settings.SEARXNG_URL.rstrip("/")
    params = {"q": query, "format": "json"}
    if language:
        params["language"] = language
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout), trust_env=False) as session,
            session.get(f"{base}/search", params=params, headers={"Accept": "application/json"}) as response,
        ):
            if response.status == 403:
                raise ToolError(
                    _(
                        "The search service refused to answer in JSON. An admin must add “json” to search.formats "
                        "in SearXNG's settings.yml."
                    )
                )
            if response.status == 429:
                raise ToolError(_("The search service is rate limiting Jarvis. Try again in a minute."))
            if response.status >= 400:
                raise ToolError(
                    _("The search service answered HTTP %(status)d. Try again later.") % {"status": response.status}
                )
            return await response.json(content_type=None)
    except TimeoutError as exc:
        raise ToolError(_("The search service did not answer in time.")) from exc
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        logger.warning("SearXNG at %s failed: %s", base, exc.__class__.__name__)
        raise ToolError(_("The search service cannot be reached right now.")) from exc
