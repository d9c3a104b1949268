"""Webhook mode: Telegram posts updates to the web app, which queues them so that any worker can answer.

The view checks Telegram's secret-token header in constant time, writes the update down (a redelivery is
recognised by its update id and answered once) and queues `telegram_update_process` to django-q2. The
worker builds the bot's Application without an updater and hands it the update (the PTB maintainers'
custom-webhook pattern). `webhooks_register` is what `manage.py runbot --webhook URL` calls.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from dataclasses import dataclass

from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from django_q.tasks import async_task
from telegram import Update
from telegram.error import TelegramError

from botapp.models import Bot, ProcessedUpdate
from botapp.telegram.application import application_prepare, build_application
from botapp.telegram.services import update_mark_done, update_record

logger = logging.getLogger(__name__)

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"  # noqa: S105 (a header name, not a secret)


def webhook_secret(bot_id: int) -> str:
    """The secret Telegram sends for one bot: derived from TELEGRAM_WEBHOOK_SECRET, so bots never share one."""
    key = settings.TELEGRAM_WEBHOOK_SECRET.encode()
    # Hex keeps to the characters Telegram allows in a secret token (A-Z, a-z, 0-9, _ and -).
    return hmac.new(key, f"jarvis-webhook:{bot_id}".encode(), hashlib.sha256).hexdigest()


def _refused(reason: str, bot_id: int) -> HttpResponse:
    logger.warning("Webhook call for bot %s refused: %s", bot_id, reason)
    return HttpResponse(status=403)


@csrf_exempt
@require_POST
def telegram_webhook(request: HttpRequest, bot_id: int) -> HttpResponse:
    """Accept one update from Telegram for bot `bot_id` and queue it; never answers it here."""
    if not settings.TELEGRAM_WEBHOOK_SECRET:
        return _refused("TELEGRAM_WEBHOOK_SECRET is not set, so webhook mode is off", bot_id)
    sent = request.headers.get(SECRET_HEADER, "")
    if not hmac.compare_digest(sent.encode(), webhook_secret(bot_id).encode()):
        return _refused("wrong or missing secret token", bot_id)
    try:
        payload = json.loads(request.body)
    except (ValueError, UnicodeDecodeError):
        return JsonResponse({"ok": False, "error": "The body is not JSON."}, status=400)
    if not isinstance(payload, dict) or not isinstance(payload.get("update_id"), int):
        return JsonResponse({"ok": False, "error": "The body is not a Telegram update."}, status=400)
    bot = Bot.objects.filter(pk=bot_id).only("id", "enabled").first()
    if bot is None:
        return JsonResponse({"ok": False, "error": "No such bot."}, status=404)
    if not bot.enabled:
        # Acknowledged, so Telegram stops redelivering to a bot an admin switched off.
        logger.info("Update %s for disabled bot %s dropped", payload["update_id"], bot_id)
        return JsonResponse({"ok": True, "queued": False})
    update_id = payload["update_id"]
    if not update_record(bot_id=bot_id, update_id=update_id, payload=payload):
        logger.info("Update %s of bot %s was delivered again: ignored", update_id, bot_id)
        return JsonResponse({"ok": True, "queued": False})
    try:
        async_task(
            "botapp.telegram.webhook.telegram_update_process",
            bot_id,
            update_id,
            q_options={"task_name": f"telegram update {update_id} of bot {bot_id}", "save": False},
        )
    except Exception:
        # Not queued: forget it, so that Telegram's retry is not mistaken for a redelivery.
        logger.exception("Could not queue update %s of bot %s; Telegram will send it again", update_id, bot_id)
        ProcessedUpdate.objects.filter(bot_id=bot_id, update_id=update_id).delete()
        return JsonResponse({"ok": False, "error": "The task queue is unavailable."}, status=503)
    return JsonResponse({"ok": True, "queued": True})


async def _process(bot: Bot, payload: dict) -> None:
    application = build_application(bot, polling=False)
    async with application:
        await application.process_update(Update.de_json(payload, application.bot))
    await sync_to_async(update_mark_done)(bot_id=bot.pk, update_id=payload["update_id"])


def telegram_update_process(bot_id: int, update_id: int) -> str:
    """Worker side: answer one stored update with the bot's handlers, then mark it done."""
    row = ProcessedUpdate.objects.select_related("bot__default_persona").filter(bot_id=bot_id, update_id=update_id)
    row = row.first()
    if row is None:
        return f"Update {update_id} of bot {bot_id} is not stored; nothing to do."
    if row.state == ProcessedUpdate.State.DONE:
        return f"Update {update_id} of bot {bot_id} was already answered."
    if not row.bot.enabled:
        return f"Bot {bot_id} is disabled; update {update_id} is not answered."
    async_to_sync(_process)(row.bot, row.payload)
    return f"Update {update_id} of bot {bot_id} answered."


class WebhookError(Exception):
    """Webhook mode cannot be switched on; `str(error)` says why and what to do."""


@dataclass(frozen=True)
class Registered:
    bot: Bot
    url: str


async def _register(bot: Bot, url: str) -> None:
    application = build_application(bot, polling=False)
    async with application:
        await application.bot.set_webhook(
            url=url, secret_token=webhook_secret(bot.pk), allowed_updates=Update.ALL_TYPES, drop_pending_updates=False
        )
        # Polling registers the command menu when it starts; in webhook mode this is the moment.
        await application_prepare(application)


def webhooks_register(*, bots: list[Bot], base_url: str) -> list[Registered]:
    """Point Telegram at this site for each bot (setWebhook with the bot's secret token).

    Raises WebhookError with a sentence when a setting is missing or Telegram refuses.
    """
    if not settings.TELEGRAM_WEBHOOK_SECRET:
        raise WebhookError(
            "TELEGRAM_WEBHOOK_SECRET is not set: put a long random value in .env, the same on every web server."
        )
    if not base_url.startswith(("https://", "http://")):
        raise WebhookError(f"{base_url!r} is not a web address: give the public https:// address of this site.")
    registered = []
    for bot in bots:
        url = base_url.rstrip("/") + reverse("telegram-webhook", args=[bot.pk])
        try:
            async_to_sync(_register)(bot, url)
        except TelegramError as exc:
            raise WebhookError(f"Telegram refused the webhook of bot {bot.name}: {exc}. Check the address.") from exc
        registered.append(Registered(bot=bot, url=url))
    return registered
