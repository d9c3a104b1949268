"""`manage.py runbot`: run the Telegram bots by long polling."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import subprocess
import sys
import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

from botapp.database import connections_keep
from botapp.models import Bot
from botapp.telegram.runner import BotsNotStarted, bots_run
from botapp.telegram.services import bot_from_environment
from botapp.telegram.webhook import WebhookError, webhooks_register

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Run every enabled Telegram bot (or --bot NAME) in this process until SIGTERM or Ctrl-C."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--bot", metavar="NAME", help="Run only the bot with this name.")
        parser.add_argument(
            "--processes",
            type=int,
            default=1,
            metavar="N",
            help="Share the bots among N processes, so that many busy bots use more than one core (each bot runs "
            "in one of them; at most one process per bot).",
        )
        # The share of the bots one of those processes runs: "I/N", the I-th of N (counting from 0).
        parser.add_argument("--share", help=argparse.SUPPRESS)
        parser.add_argument(
            "--webhook",
            metavar="URL",
            help="Instead of polling, register the webhook of each bot at this public https:// address and exit.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        bot_from_environment(token=settings.TELEGRAM_BOT_TOKEN, allowed_users=settings.TELEGRAM_ALLOWED_USERS)
        bots = Bot.objects.filter(enabled=True).select_related("default_persona").order_by("name")
        if options["bot"]:
            bots = bots.filter(name=options["bot"])
            if not bots:
                raise CommandError(
                    f"There is no enabled bot named {options['bot']!r}. Check its name and that it is enabled in "
                    "the admin (Bots)."
                )
        bots = [bot for bot in bots if bot.token_encrypted]
        if not bots:
            raise CommandError(
                "No Telegram bot to run: set TELEGRAM_BOT_TOKEN in .env (the token @BotFather gave you), "
                "or add an enabled bot with its token in the admin (Bots)."
            )
        if options["webhook"]:
            try:
                registered = webhooks_register(bots=bots, base_url=options["webhook"])
            except WebhookError as exc:
                raise CommandError(str(exc)) from exc
            for entry in registered:
                self.stdout.write(f"Bot {entry.bot.name}: Telegram now sends its updates to {entry.url}")
            return
        if options["share"]:
            index, count = (int(part) for part in options["share"].split("/"))
            bots = bots[index::count]
        elif options["processes"] > 1 and len(bots) > 1:
            self._shares_run(min(options["processes"], len(bots)))
            return
        connections_keep()
        try:
            asyncio.run(bots_run(bots))
        except BotsNotStarted as exc:
            raise CommandError(str(exc)) from exc

    def _shares_run(self, count: int) -> None:
        """Run the bots in `count` child processes, each its share; stop them all on SIGTERM or Ctrl-C, and all
        of them (with an error, for the process manager to restart) when one exits by itself."""
        manage = settings.BASE_DIR / "manage.py"
        connections.close_all()  # this process only waits; the children open their own
        logger.info("Sharing the bots among %d processes.", count)
        children = [
            # Each in its own session: a terminal's Ctrl-C reaches this process, which passes it on once.
            subprocess.Popen([sys.executable, str(manage), "runbot", "--share", f"{i}/{count}"], start_new_session=True)
            for i in range(count)
        ]
        stopping = False

        def stop(signum: int, _frame: object) -> None:
            nonlocal stopping
            stopping = True
            for child in children:
                if child.poll() is None:
                    child.send_signal(signum)

        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            while all(child.poll() is None for child in children):
                time.sleep(0.2)
            asked = stopping
            if not asked:
                stop(signal.SIGTERM, None)
            codes = [child.wait() for child in children]
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if not asked:
            raise CommandError(f"A bot process exited by itself (exit statuses {codes}); the others were stopped.")
        if any(codes):
            raise CommandError(f"A bot process did not stop cleanly (exit statuses {codes}).")
