"""Masking of bot tokens and API keys: the log filter, and `redact` for every error text Jarvis stores."""

import logging
import re
from collections.abc import Iterable

# Telegram bot tokens ("123456:AA...", also with the colon URL-encoded) and OpenAI-style keys ("sk-...").
_TOKEN = re.compile(r"(?<!\d)(\d{5,})(:|%3[Aa])[A-Za-z0-9_-]{20,}")
_OPENAI_KEY = re.compile(r"\bsk-[A-Za-z0-9_-]{8,}")
_BOT_ID = re.compile(r"^(\d+):")
# A configured secret shorter than this (e.g. a placeholder key for a local model server) is not masked:
# masking every "x" in a text would hide everything and protect nothing.
MIN_SECRET_CHARS = 8


def _mask(secret: str) -> str:
    bot_id = _BOT_ID.match(secret)
    return f"{bot_id.group(1)}:***" if bot_id else "***"


def redact(text: str, *, secrets: Iterable[str] = ()) -> str:
    """Return `text` with each of `secrets` and anything that looks like a token or key masked.

    A bot token keeps its bot id (public) and loses the rest: `123456:***`.
    """
    for secret in sorted({s for s in secrets if s and len(s) >= MIN_SECRET_CHARS}, key=len, reverse=True):
        text = text.replace(secret, _mask(secret))
    text = _TOKEN.sub(r"\1\2***", text)
    return _OPENAI_KEY.sub("sk-***", text)


# Settings that hold a secret which an error text could quote.
SECRET_SETTINGS = (
    "OPENAI_API_KEY",
    "TELEGRAM_BOT_TOKEN",
    "TELEGRAM_WEBHOOK_SECRET",
    "SECRET_KEY",
    "FIELD_ENCRYPTION_KEY",
)


def configured_secrets() -> list[str]:
    """The secrets in the settings (no database needed): the provider's key, the env bot token, Django's keys."""
    from django.conf import settings

    if not settings.configured:
        return []
    return [getattr(settings, name, "") for name in SECRET_SETTINGS]


class RedactSecretsFilter(logging.Filter):
    """Rewrites a record's message so that secrets never reach a handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = configured_secrets()
        message = record.getMessage()
        cleaned = redact(message, secrets=secrets)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            # The whole traceback: a chained exception may quote the token that the last one does not.
            formatted = record.exc_text or logging.Formatter().formatException(record.exc_info)
            cleaned = redact(formatted, secrets=secrets)
            if cleaned != formatted:
                record.exc_text = cleaned
        return True
