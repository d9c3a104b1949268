"""The one place a Bot API client is made: the server from settings, flood control for what is sent.

`build_application` makes the polling and webhook bots from `bot_client`; the admin's token check, broadcasts
and the spend report use it directly. What they send goes through `botapp.telegram.delivery`, which waits out
flood control (429) as Telegram asks; broadcasts pace themselves (`botapp.broadcast`).
"""

from __future__ import annotations

from typing import Any, TypeVar

import telegram
from django.conf import settings
from telegram.error import TelegramError

from botapp.telegram.delivery import send_sentence

BotT = TypeVar("BotT", bound=telegram.Bot)


def bot_client(token: str, *, cls: type[BotT] = telegram.Bot, **kwargs: Any) -> BotT:
    """A Bot API client for `token` on TELEGRAM_API_BASE_URL; `kwargs` go to `cls` (requests, a processor)."""
    root = settings.TELEGRAM_API_BASE_URL
    return cls(token=token, base_url=f"{root}/bot", base_file_url=f"{root}/file/bot", **kwargs)


async def sentences_send(*, token: str, chat_ids: list[int], text: str) -> tuple[list[int], list[str]]:
    """Send one sentence Jarvis wrote to each chat, flood control waited out; the chats reached and the failures.

    One chat that refuses (the person never started the bot, or blocked it) does not keep it from the others.
    """
    sent: list[int] = []
    failed: list[str] = []
    async with bot_client(token) as client:
        for chat_id in chat_ids:
            try:
                await send_sentence(client, chat_id=chat_id, text=text)
            except TelegramError as exc:
                failed.append(f"{chat_id}: {exc}")
            else:
                sent.append(chat_id)
    return sent, failed
