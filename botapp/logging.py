"""Log filter that keeps bot tokens and API keys out of every log line."""

import logging
import re

# Telegram bot tokens ("123456:AA...") and OpenAI-style keys ("sk-...").
_SECRET_PATTERNS = [
    re.compile(r"(?<!\d)(\d{5,}):[A-Za-z0-9_-]{20,}"),
    re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"),
]


def redact(text: str) -> str:
    """Return `text` with anything that looks like a token or key masked."""
    text = _SECRET_PATTERNS[0].sub(r"\1:***", text)
    return _SECRET_PATTERNS[1].sub("sk-***", text)


class RedactSecretsFilter(logging.Filter):
    """Rewrites a record's message so that secrets never reach a handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            text = str(exc)
            if redact(text) != text:
                record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True
