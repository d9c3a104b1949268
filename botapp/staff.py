"""The work behind the admin's actions: block people, check a bot's token, export conversations."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable

import telegram
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _
from telegram.error import InvalidToken, NetworkError, TelegramError

from botapp.models import Bot, Conversation, Profile
from botapp.selectors import conversations_for_export
from botapp.telegram.client import bot_client

logger = logging.getLogger(__name__)


# --- People -------------------------------------------------------------------------------------


def profiles_set_blocked(*, users: Iterable[AbstractBaseUser], blocked: bool) -> int:
    """Block or unblock each of `users` (creating missing profiles); returns how many changed."""
    user_ids = [user.pk for user in users]
    with transaction.atomic():
        existing = set(Profile.objects.filter(user_id__in=user_ids).values_list("user_id", flat=True))
        Profile.objects.bulk_create(
            [Profile(user_id=user_id, is_blocked=blocked) for user_id in user_ids if user_id not in existing]
        )
        changed = Profile.objects.filter(user_id__in=existing).exclude(is_blocked=blocked).update(is_blocked=blocked)
    return changed + len(set(user_ids) - existing)


# --- Bots ---------------------------------------------------------------------------------------


class TokenCheckError(Exception):
    """The Bot API did not accept the token; `str(error)` is the sentence to show the admin."""


async def _get_me(token: str) -> telegram.User:
    # Initialising the client is itself the getMe call; `client.bot` is its answer.
    async with bot_client(token) as client:
        return client.bot


def bot_token_check(*, bot: Bot) -> str:
    """Ask the Bot API who `bot`'s token belongs to (getMe), store the username and return it."""
    try:
        token = bot.token
    except ValueError as exc:
        raise TokenCheckError(str(exc)) from exc
    if not token:
        raise TokenCheckError(_("Bot “%(bot)s” has no token: enter the token from @BotFather.") % {"bot": bot})
    # The network call happens outside any transaction; only the result is stored.
    try:
        me = asyncio.run(_get_me(token))
    except InvalidToken as exc:
        raise TokenCheckError(
            _("Telegram rejected the token of bot “%(bot)s”. Copy the token from @BotFather and save it again.")
            % {"bot": bot}
        ) from exc
    except NetworkError as exc:
        raise TokenCheckError(
            _("Could not reach the Bot API at %(url)s to check bot “%(bot)s”: %(error)s. Try again later.")
            % {"url": settings.TELEGRAM_API_BASE_URL, "bot": bot, "error": _without(token, str(exc))}
        ) from exc
    except TelegramError as exc:
        raise TokenCheckError(
            _("The Bot API refused to check bot “%(bot)s”: %(error)s.")
            % {"bot": bot, "error": _without(token, str(exc))}
        ) from exc
    username = me.username or ""
    if bot.telegram_username != username:
        bot.telegram_username = username
        bot.save(update_fields=["telegram_username"])
    logger.info("Token of bot %s belongs to @%s", bot.pk, username)
    return username


def _without(secret: str, text: str) -> str:
    return text.replace(secret, "…") if secret else text


# --- Conversation export ------------------------------------------------------------------------


def _who(conversation: Conversation) -> str:
    return conversation.user.get_username() if conversation.user_id else ""


def conversations_export_json(*, ids: Iterable[int]) -> str:
    """The conversations with `ids` and all their messages as a JSON document."""
    documents = []
    for conversation in conversations_for_export(ids=ids):
        documents.append(
            {
                "id": conversation.pk,
                "title": str(conversation),
                "user": _who(conversation),
                "channel": conversation.channel,
                "bot": conversation.bot.name if conversation.bot else None,
                "persona": conversation.persona.name if conversation.persona else None,
                "model": conversation.effective_model,
                "created_at": conversation.created_at.isoformat(),
                "updated_at": conversation.updated_at.isoformat(),
                "messages": [
                    {
                        "id": message.pk,
                        "role": message.role,
                        "status": message.status,
                        "content": message.content,
                        "input_tokens": message.input_tokens,
                        "output_tokens": message.output_tokens,
                        "model": message.model,
                        "created_at": message.created_at.isoformat(),
                    }
                    for message in conversation.messages.all()
                ],
            }
        )
    return json.dumps(
        {"exported_at": timezone.now().isoformat(), "conversations": documents}, ensure_ascii=False, indent=2
    )


def conversations_export_markdown(*, ids: Iterable[int]) -> str:
    """The conversations with `ids` as a Markdown transcript, one section per conversation."""
    parts = []
    for conversation in conversations_for_export(ids=ids):
        lines = [
            f"# {conversation}",
            "",
            f"- User: {_who(conversation)}",
            f"- Channel: {conversation.channel}" + (f" ({conversation.bot.name})" if conversation.bot else ""),
            f"- Persona: {conversation.persona.name if conversation.persona else '-'}",
            f"- Model: {conversation.effective_model}",
            f"- Started: {timezone.localtime(conversation.created_at):%Y-%m-%d %H:%M %Z}",
            "",
        ]
        for message in conversation.messages.all():
            when = timezone.localtime(message.created_at).strftime("%Y-%m-%d %H:%M")
            status = "" if message.status == "complete" else f" [{message.status}]"
            lines += [f"## {message.role.capitalize()} · {when}{status}", "", message.content or message.error, ""]
        parts.append("\n".join(lines))
    return "\n\n---\n\n".join(parts) + "\n"
