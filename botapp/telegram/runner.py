"""Running bots by long polling in one process until asked to stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass

from telegram import Update
from telegram.error import InvalidToken, TelegramError
from telegram.ext import Application

from botapp.models import AccessPolicy, Bot
from botapp.telegram.application import (
    application_prepare,
    application_recover,
    build_application,
    pending_sweep,
    polling_error,
)

logger = logging.getLogger(__name__)

# On SIGTERM, answers being written get this long to finish; the rest are finished after the restart.
STOP_GRACE_SECONDS = 25.0


class BotsNotStarted(Exception):
    """None of the bots could start; `str(error)` says why."""


def _announce(bot: Bot, username: str) -> None:
    if bot.access_policy == AccessPolicy.OPEN:
        logger.warning(
            "Bot %s (@%s) is open: anyone on Telegram who finds it can use it, at your expense. To restrict it, "
            "set TELEGRAM_ALLOWED_USERS to Telegram user ids or @usernames (comma-separated), or choose "
            "the allowlist policy for this bot in the admin.",
            bot.name,
            username,
        )
    else:
        logger.info("Bot %s (@%s) answers only its allowlist: %s", bot.name, username, bot.allowed_users or "(empty)")


@dataclass
class Polling:
    """A bot being polled: its Application, the answers a restart is finishing, and the sweep for stuck ones."""

    application: Application
    recovery: list[asyncio.Task[None]]
    sweep: asyncio.Task[None]


async def _start(bot: Bot) -> Polling | None:
    try:
        application = build_application(bot)
    except ValueError as exc:  # the token cannot be decrypted
        logger.error("Bot %s cannot start: %s", bot.name, exc)
        return None
    try:
        await application.initialize()
    except InvalidToken:
        logger.error(
            "Telegram refused the token of bot %s (%s): fix it in the admin or .env.", bot.name, bot.token_hint
        )
        return None
    except TelegramError as exc:
        logger.error("Bot %s could not reach Telegram: %s", bot.name, exc)
        return None
    username = application.bot.username
    if bot.telegram_username != username:
        bot.telegram_username = username
        await bot.asave(update_fields=["telegram_username"])
    try:
        await application_prepare(application)
    except TelegramError as exc:
        logger.warning("Could not register the command menu of bot %s: %s", bot.name, exc)
    await application.start()
    recovery = await application_recover(application)
    await application.updater.start_polling(allowed_updates=Update.ALL_TYPES, timeout=30, error_callback=polling_error)
    sweep = asyncio.create_task(pending_sweep(application), name=f"pending answers of bot {bot.name}")
    _announce(bot, username)
    return Polling(application=application, recovery=recovery, sweep=sweep)


async def _stop(polling: Polling) -> None:
    application, recovery = polling.application, polling.recovery
    polling.sweep.cancel()
    if application.updater.running:
        await application.updater.stop()
    try:
        async with asyncio.timeout(STOP_GRACE_SECONDS):
            if recovery:
                await asyncio.gather(*recovery, return_exceptions=True)
            await application.stop()
    except TimeoutError:
        logger.warning(
            "Stopping bot %s: answers still being written are finished after the restart", application.bot.username
        )
        for task in recovery:
            task.cancel()
    with contextlib.suppress(Exception):
        if application.running:
            await application.stop()
    await application.shutdown()


async def bots_run(bots: list[Bot], *, stop: asyncio.Event | None = None) -> None:
    """Poll every bot until SIGTERM/SIGINT (or `stop` is set), then stop cleanly."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    running = []
    try:
        for bot in bots:
            started = await _start(bot)
            if started is not None:
                running.append(started)
        if not running:
            raise BotsNotStarted("No bot could start; the log above says why.")
        logger.info("Jarvis is running %d bot(s). Stop with Ctrl-C or SIGTERM.", len(running))
        await stop.wait()
        logger.info("Stopping…")
    finally:
        for polling in running:
            await _stop(polling)
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
    logger.info("Stopped.")
