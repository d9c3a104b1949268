"""Text as every database can store it: no NUL characters, no lone surrogates, in strings and in JSON."""

from __future__ import annotations

import re
from typing import Any

# PostgreSQL refuses NUL in text and in jsonb; a lone surrogate cannot be encoded as UTF-8 by any driver.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _replacement(match: re.Match[str]) -> str:
    # NUL carries nothing a reader could see; a broken surrogate shows as the replacement character.
    return "" if match.group() == "\x00" else "\ufffd"


def storable_text(text: str) -> str:
    """`text` without NUL characters and with lone surrogates replaced: safe for any column and any driver."""
    if not _UNSTORABLE.search(text):
        return text
    return _UNSTORABLE.sub(_replacement, text)


def storable_json(value: Any) -> Any:
    """A JSON value (as `json.loads` gives it) with every string and key made storable."""
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, dict):
        return {storable_text(key): storable_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [storable_json(item) for item in value]
    return value
