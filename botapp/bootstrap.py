"""First start of a Jarvis: the admin account, which processes to run, and what the settings still lack."""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction

from botapp import llm
from botapp.models import Bot
from botapp.site import site_url

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdminAccount:
    """The outcome of `admin_ensure`: who can sign in, and the password if it was just generated."""

    username: str
    created: bool
    generated_password: str = ""
    conflict: bool = False


def admin_ensure(*, username: str, email: str = "", password: str = "") -> AdminAccount:
    """Create a superuser when there is none; an empty `password` gets a generated one (returned once)."""
    users = get_user_model()
    existing = users.objects.filter(is_superuser=True, is_active=True).order_by("pk").first()
    if existing is not None:
        return AdminAccount(username=existing.get_username(), created=False)
    username = username or "admin"
    with transaction.atomic():
        if users.objects.filter(**{users.USERNAME_FIELD: username}).exists():
            # Never promote an existing account to superuser behind its owner's back.
            return AdminAccount(username=username, created=False, conflict=True)
        generated = "" if password else secrets.token_urlsafe(12)
        users.objects.create_superuser(username=username, email=email, password=password or generated)
    logger.debug("Created the admin account %r", username)
    return AdminAccount(username=username, created=True, generated_password=generated)


def bots_configured() -> list[Bot]:
    """The enabled bots that have a token: what `runbot` would run."""
    return [bot for bot in Bot.objects.filter(enabled=True).order_by("name") if bot.token_encrypted]


def processes_to_run() -> list[str]:
    """The Procfile entries one machine runs: the web server and a worker always, the bot when there is one."""
    processes = ["web", "worker"]
    if bots_configured():
        processes.append("bot")
    return processes


def settings_advice() -> list[str]:
    """Sentences about settings that are missing or off, each saying what it means and what to set."""
    advice = []
    if not llm.is_configured():
        advice.append(
            "OPENAI_API_KEY is not set: the chat page and the admin run, but Jarvis cannot answer yet. "
            "Put OPENAI_API_KEY=sk-... (or OPENAI_BASE_URL of a local OpenAI-compatible server) in .env "
            "and run ./jarvis up again."
        )
    if not bots_configured():
        advice.append(
            "TELEGRAM_BOT_TOKEN is not set and no bot is enabled: the Telegram bot is not started. "
            "To enable it, put the token from @BotFather in .env as TELEGRAM_BOT_TOKEN=... (or add a bot in "
            "the admin under Bots) and run ./jarvis up again."
        )
    elif not settings.SITE_URL:
        advice.append(
            "SITE_URL is not set: the sign-in links of /web and the page /link names point to this machine "
            f"({site_url()}), which a phone cannot open. Put the address people reach the web page at in .env, "
            "for example SITE_URL=https://jarvis.example.com."
        )
    if not settings.OPENAI_EMBEDDING_MODEL:
        advice.append(
            "OPENAI_EMBEDDING_MODEL is empty: documents and knowledge bases are searched by their words only "
            "(full-text), without embeddings. Set it (e.g. text-embedding-3-small) if your provider has an "
            "embeddings model, then re-index the files in the admin."
        )
    if not settings.ADMIN_TELEGRAM_IDS:
        advice.append(
            "ADMIN_TELEGRAM_IDS is empty: nobody gets the daily spend report. Put the admins' Telegram user ids "
            "there, comma-separated."
        )
    if settings.RETENTION_MODE not in ("delete", "anonymise"):
        advice.append(
            f"RETENTION_MODE is {settings.RETENTION_MODE!r}, which Jarvis does not know: set it to delete or "
            "anonymise, or the retention job fails."
        )
    return advice
