"""Secrets kept out of what Jarvis stores: message, tool and MCP errors and django-q2's task records, masked like
the logs.

python-telegram-bot's `InvalidToken` quotes the whole token, a proxy's error page may quote the request URL
(which holds the token), and a provider may echo the API key: any error text can carry a secret. Each
storage path masks it in one place before the row is written: `Message` (its save, and its queryset's
update and bulk_create) and django-q2's `Task` (a pre_save receiver, since django-q2 writes task results
itself, in `django_q.monitor.save_task`).
"""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.db.models import Model

from botapp import crypto
from botapp.logging import configured_secrets, redact


def known_secrets(*, bot_model: type[Model] | None = None) -> list[str]:
    """Every secret Jarvis holds: the settings' key and token, and each bot's token (decrypted).

    `bot_model` is the Bot model to read (a migration passes its historical one).
    """
    secrets = configured_secrets()
    bot_model = bot_model or apps.get_model("botapp", "Bot")
    encrypted_values = list(bot_model.objects.exclude(token_encrypted="").values_list("token_encrypted", flat=True))
    if bot_model is apps.get_model("botapp", "Bot"):
        # MCP servers' auth headers (a migration's historical models predate them).
        server_model = apps.get_model("botapp", "McpServer")
        encrypted_values += server_model.objects.exclude(auth_header_encrypted="").values_list(
            "auth_header_encrypted", flat=True
        )
    for encrypted in encrypted_values:
        try:
            secrets.append(crypto.decrypt(encrypted))
        except ValueError:
            # Encrypted with an old key: unreadable here, so it cannot be quoted in an error either.
            continue
    return secrets


def stored_text_redact(text: str) -> str:
    """`text` as it may be stored: known secrets and anything shaped like a token or key masked."""
    if not text:
        return text
    return redact(text, secrets=known_secrets())


def redact_value(value: Any, secrets: list[str]) -> Any:
    """`value` with every string in it (also inside lists, tuples and dicts) redacted."""
    if isinstance(value, str):
        return redact(value, secrets=secrets)
    if isinstance(value, list | tuple):
        return type(value)(redact_value(item, secrets) for item in value)
    if isinstance(value, dict):
        return {key: redact_value(item, secrets) for key, item in value.items()}
    return value


def task_record_redact(sender: type, instance: Any, **kwargs: Any) -> None:
    """pre_save of django-q2's Task (Success and Failure are proxies of it): mask its result and arguments.

    A failed task's result is the exception text and traceback, so a rejected token would be stored whole.
    """
    secrets = known_secrets()
    for field in ("result", "args", "kwargs"):
        setattr(instance, field, redact_value(getattr(instance, field), secrets))
