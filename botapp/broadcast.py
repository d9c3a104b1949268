"""Broadcasts: an admin's message to every person of a bot, sent by a django-q2 task within Telegram's limits."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import telegram
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import F
from django.utils import timezone
from django.utils.translation import gettext as _
from django_q.tasks import async_task
from telegram.error import Forbidden, InvalidToken, RetryAfter, TelegramError

from botapp.models import Bot, BotUser, Broadcast
from botapp.selectors import broadcast_recipients
from botapp.telegram.client import bot_client
from botapp.telegram.delivery import telegram_seconds

logger = logging.getLogger(__name__)

# Telegram allows about 30 messages a second to different chats; stay below it.
MESSAGES_PER_SECOND = 25
# How many times one message is retried after a flood-control answer before it counts as failed.
MAX_RETRIES = 3
BATCH_SIZE = 500
MAX_TEXT_CHARS = 4096


class BroadcastError(ValueError):
    """The broadcast cannot be created; `str(error)` is the sentence to show the admin."""


def broadcast_create(*, bot: Bot, text: str, created_by: AbstractBaseUser | None) -> Broadcast:
    """Store a broadcast and queue its sending once the row is committed."""
    text = text.strip()
    if not text:
        raise BroadcastError(_("The broadcast is empty: write the message to send."))
    if len(text) > MAX_TEXT_CHARS:
        raise BroadcastError(
            _("The broadcast is %(length)d characters long; Telegram accepts at most %(limit)d. Shorten it.")
            % {"length": len(text), "limit": MAX_TEXT_CHARS}
        )
    with transaction.atomic():
        broadcast = Broadcast.objects.create(bot=bot, text=text, created_by=created_by)
        transaction.on_commit(
            lambda: async_task("botapp.broadcast.broadcast_send", broadcast.pk, task_name=f"broadcast-{broadcast.pk}")
        )
    return broadcast


@dataclass
class BatchOutcome:
    """What happened to one batch of recipients."""

    sent: int = 0
    failed: int = 0
    blocked_ids: list[int] = field(default_factory=list)


class _Pacer:
    """Spaces message starts evenly and pauses everyone when Telegram asks us to slow down."""

    def __init__(self, per_second: float) -> None:
        self.interval = 1.0 / per_second
        self.next_start = time.monotonic()
        self.lock = asyncio.Lock()

    async def wait_turn(self) -> None:
        async with self.lock:
            delay = self.next_start - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self.next_start = max(self.next_start, time.monotonic()) + self.interval

    def pause(self, seconds: float) -> None:
        self.next_start = max(self.next_start, time.monotonic() + seconds)


async def _send_one(client: telegram.Bot, pacer: _Pacer, chat_id: int, text: str) -> str:
    for _attempt in range(MAX_RETRIES + 1):
        await pacer.wait_turn()
        try:
            await client.send_message(chat_id=chat_id, text=text)
        except RetryAfter as exc:
            pacer.pause(telegram_seconds(exc.retry_after))
            continue
        except Forbidden:
            return "blocked"
        except TelegramError as exc:
            logger.warning("Broadcast message to chat %s failed: %s", chat_id, exc)
            return "failed"
        return "sent"
    return "failed"


async def _send_batch(*, token: str, text: str, recipients: list[tuple[int, int]]) -> BatchOutcome:
    pacer = _Pacer(MESSAGES_PER_SECOND)
    async with bot_client(token) as client:
        results = await asyncio.gather(*(_send_one(client, pacer, chat_id, text) for _pk, chat_id in recipients))
    outcome = BatchOutcome()
    for (bot_user_id, _chat_id), result in zip(recipients, results, strict=True):
        if result == "sent":
            outcome.sent += 1
        elif result == "blocked":
            outcome.blocked_ids.append(bot_user_id)
        else:
            outcome.failed += 1
    return outcome


def _record(broadcast: Broadcast, outcome: BatchOutcome) -> None:
    with transaction.atomic():
        if outcome.blocked_ids:
            BotUser.objects.filter(pk__in=outcome.blocked_ids).update(blocked_bot_at=timezone.now())
        Broadcast.objects.filter(pk=broadcast.pk).update(
            sent_count=F("sent_count") + outcome.sent,
            failed_count=F("failed_count") + outcome.failed,
            blocked_count=F("blocked_count") + len(outcome.blocked_ids),
        )


def _finish(broadcast: Broadcast, state: str) -> None:
    Broadcast.objects.filter(pk=broadcast.pk).update(state=state, finished_at=timezone.now())


def broadcast_send(broadcast_id: int) -> str:
    """django-q2 task: send a queued broadcast to the bot's people who have not blocked it."""
    # Claiming the row makes a redelivered task a no-op: a broadcast is sent at most once.
    if not Broadcast.objects.filter(pk=broadcast_id, state=Broadcast.State.QUEUED).update(
        state=Broadcast.State.SENDING
    ):
        logger.warning("Broadcast %s is not queued any more; not sending it again", broadcast_id)
        return "skipped"
    broadcast = Broadcast.objects.select_related("bot").get(pk=broadcast_id)
    try:
        token = broadcast.bot.token
    except ValueError:
        logger.exception("Broadcast %s: the bot token cannot be decrypted", broadcast_id)
        _finish(broadcast, Broadcast.State.FAILED)
        return "failed"
    after_id = 0
    while recipients := broadcast_recipients(bot=broadcast.bot, after_id=after_id, limit=BATCH_SIZE):
        after_id = recipients[-1][0]
        try:
            outcome = asyncio.run(_send_batch(token=token, text=broadcast.text, recipients=recipients))
        except InvalidToken:
            logger.error("Broadcast %s: Telegram rejected the token of bot %s", broadcast_id, broadcast.bot_id)
            _finish(broadcast, Broadcast.State.FAILED)
            return "failed"
        except TelegramError as exc:
            logger.error("Broadcast %s stopped: the Bot API could not be used: %s", broadcast_id, exc)
            _finish(broadcast, Broadcast.State.FAILED)
            return "failed"
        _record(broadcast, outcome)
    _finish(broadcast, Broadcast.State.DONE)
    broadcast.refresh_from_db()
    logger.info(
        "Broadcast %s done: %s sent, %s failed, %s blocked the bot",
        broadcast_id,
        broadcast.sent_count,
        broadcast.failed_count,
        broadcast.blocked_count,
    )
    return "done"
