"""Webhook mode: Telegram posts updates to the web app, which queues them so that any worker can answer.

The view checks Telegram's secret-token header in constant time, writes the update down (a redelivery is
recognised by its update id and answered once) and queues `telegram_update_process` to django-q2. The
worker hands the update to the bot's Application, built without an updater (the PTB maintainers'
custom-webhook pattern) and initialised once per worker process: it lives on the process's own event loop,
so its connections and its `getMe` serve every update after the first. `webhooks_register` is what
`manage.py runbot --webhook URL` calls.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from asgiref.sync import AsyncToSync, SyncToAsync, async_to_sync
from django.conf import settings
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from django_q.tasks import async_task
from telegram import Update
from telegram.error import TelegramError
from telegram.ext import Application

from botapp.models import Bot, ProcessedUpdate
from botapp.storable import storable_json
from botapp.telegram.application import ChatOrderedProcessor, application_prepare, build_application
from botapp.telegram.services import update_record

logger = logging.getLogger(__name__)

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"  # noqa: S105 (a header name, not a secret)
# Update ids fit a signed 64-bit column; Telegram's own are far smaller.
MAX_UPDATE_ID = 2**63 - 1
# Telegram's deepest updates (a reply to a message with a quoted reply, its entities) are about ten levels.
MAX_UPDATE_DEPTH = 32
RETRY_LATER = {"Retry-After": "5"}


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
        payload = update_payload_parse(request.body)
    except MalformedUpdate as exc:
        logger.warning("Webhook call for bot %s refused: %s", bot_id, exc)
        return JsonResponse({"ok": False, "error": str(exc)}, status=400)
    try:
        return _accept(bot_id, payload)
    except DatabaseError as exc:
        # Not written down, so not acknowledged: Telegram sends it again, and later updates wait behind it.
        logger.warning("Update of bot %s not accepted, the database failed: %s", bot_id, exc)
        return JsonResponse({"ok": False, "error": "The database is unavailable."}, status=503, headers=RETRY_LATER)


def _accept(bot_id: int, payload: dict[str, Any]) -> HttpResponse:
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
        return JsonResponse({"ok": False, "error": "The task queue is unavailable."}, status=503, headers=RETRY_LATER)
    return JsonResponse({"ok": True, "queued": True})


class MalformedUpdate(ValueError):
    """The body is not a Telegram update; `str(error)` says what is wrong."""


def _depth(value: Any) -> int:
    deepest, level, stack = 0, 0, [(value, 1)]
    while stack:
        value, level = stack.pop()
        deepest = max(deepest, level)
        if isinstance(value, dict):
            stack.extend((item, level + 1) for item in value.values())
        elif isinstance(value, list):
            stack.extend((item, level + 1) for item in value)
    return deepest


def update_payload_parse(body: bytes) -> dict[str, Any]:
    """The update in a webhook body, made storable; MalformedUpdate when it is not one Telegram could send."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise MalformedUpdate("The body is not JSON.") from exc
    if not isinstance(payload, dict):
        raise MalformedUpdate("The body is not a Telegram update.")
    update_id = payload.get("update_id")
    # bool is an int in Python; JSON's true is not an update id.
    if type(update_id) is not int or not 0 <= update_id <= MAX_UPDATE_ID:
        raise MalformedUpdate("The update_id is not a Telegram update id.")
    if _depth(payload) > MAX_UPDATE_DEPTH:
        raise MalformedUpdate("The update is nested deeper than any Telegram update.")
    payload = storable_json(payload)
    try:
        Update.de_json(payload, None)
    except Exception as exc:
        raise MalformedUpdate("The body is not a Telegram update python-telegram-bot can read.") from exc
    return payload


class _WorkerLoop:
    """This process's event loop, in a thread of its own, and each bot's initialised Application on it.

    An Application's HTTP connections belong to the loop that opened them, and `async_to_sync` makes a new
    loop for every call; so updates are handled here, where one Application per bot lives from its first
    update on (python-telegram-bot's own Django example keeps one the same way). The task's thread waits and
    serves the handlers' database calls meanwhile, as it does under `async_to_sync`: one task at a time, as
    a django-q2 worker runs them.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.pid = os.getpid()
        self.applications: dict[int, tuple[tuple[str, str], Application]] = {}
        self.running = threading.Lock()
        threading.Thread(target=self.loop.run_forever, name="telegram-webhook-loop", daemon=True).start()

    def process(self, bot: Bot, payload: dict[str, Any]) -> None:
        """Answer one update with the bot's Application; returns when it is handled."""
        previous = getattr(SyncToAsync.threadlocal, "main_event_loop", None)
        with self.running:
            try:
                async_to_sync(self._borrow_thread, force_new_loop=True)(_process(self, bot, payload))
            finally:
                # asgiref notes the loop whose calls this thread last ran, to send its next async_to_sync
                # there; this loop outlives the call, so that note is put back.
                SyncToAsync.threadlocal.main_event_loop = previous

    async def _borrow_thread(self, coroutine: Coroutine[Any, Any, None]) -> None:
        # asgiref runs a loop's thread-sensitive calls in the thread registered for that loop; async_to_sync
        # registered the waiting thread for its own loop, and this loop borrows it while the update runs.
        waiting_thread = AsyncToSync.loop_thread_executors[asyncio.get_running_loop()]
        AsyncToSync.loop_thread_executors[self.loop] = waiting_thread
        try:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, self.loop))
        finally:
            del AsyncToSync.loop_thread_executors[self.loop]

    async def application(self, bot: Bot) -> Application:
        """The bot's initialised Application; built again when its token or the Bot API address changed."""
        key = (bot.token_encrypted, settings.TELEGRAM_API_BASE_URL)
        known, application = self.applications.get(bot.pk, (None, None))
        if application is not None and known == key:
            return application
        if application is not None:
            await application.shutdown()
        application = build_application(bot, polling=False)
        await application.initialize()
        self.applications[bot.pk] = (key, application)
        return application


_worker_loop: _WorkerLoop | None = None
_worker_loop_lock = threading.Lock()


def _worker() -> _WorkerLoop:
    global _worker_loop
    with _worker_loop_lock:
        # A forked worker process inherits the object but not its thread: it starts its own.
        if _worker_loop is None or _worker_loop.pid != os.getpid():
            _worker_loop = _WorkerLoop()
        return _worker_loop


async def _process(worker: _WorkerLoop, bot: Bot, payload: dict[str, Any]) -> None:
    application = await worker.application(bot)
    update = Update.de_json(payload, application.bot)
    processor: ChatOrderedProcessor = application.update_processor  # type: ignore[assignment]
    # Written down by the view; the processor keeps the chat's order and rides out a database outage.
    processor.admit_stored(update.update_id)
    await processor.process_update(update, application.process_update(update))


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
    _worker().process(row.bot, row.payload)
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
