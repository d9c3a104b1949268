"""The tool loop's limits: rounds, calls per round, time, and how much of a result the model gets."""

from __future__ import annotations

from django.conf import settings

# Calls beyond this many in one round are refused (and the model is told so): a runaway batch stays cheap.
MAX_CALLS_PER_ROUND = 8
# What a tool result may put before the model, in characters (about 3,000 tokens), and what is kept on record.
MAX_RESULT_CHARS = 12_000
# Arguments longer than this are not a sensible tool call; they are refused, not run.
MAX_ARGUMENT_CHARS = 8_000
# A web page is read up to this many bytes (after decompression); the rest is ignored.
MAX_PAGE_BYTES = 2 * 1024 * 1024
# Redirects followed when reading a page; each hop is checked like the first address.
MAX_REDIRECTS = 5
# Search results given to the model.
MAX_SEARCH_RESULTS = 8


def max_rounds() -> int:
    """Tool rounds an answer may take (TOOLS_MAX_ROUNDS); after the last, the model must answer in words."""
    return max(settings.TOOLS_MAX_ROUNDS, 0)


def timeout() -> float:
    """Seconds one tool call may take, MCP servers included (TOOLS_TIMEOUT)."""
    return settings.TOOLS_TIMEOUT


def cap(text: str, limit: int = MAX_RESULT_CHARS) -> str:
    """`text` cut to `limit` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n\n[… {len(text) - limit:,} more characters left out]"
