"""`manage.py runbot`: run the Telegram bots by long polling."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

from botapp.database import connections_keep
from botapp.models import Bot
from botapp.telegram.runner import BotsNotStarted, bots_run
from botapp.telegram.services import bot_from_environment
from botapp.telegram.webhook import WebhookError, webhooks_register


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
        """Become the supervisor of `count` child processes, each running its share of the bots."""
        manage = settings.BASE_DIR / "manage.py"
        supervisor = Path(__file__).resolve().parents[2] / "supervise.py"
        connections.close_all()
        sys.stdout.flush()
        sys.stderr.flush()
        command = [sys.executable, str(manage), "runbot"]
        # Replaced, not forked: the process manager keeps the process id it started.
        # -I: botapp/ is not put on the path, where botapp/logging.py would stand for the standard library's.
        os.execv(sys.executable, [sys.executable, "-I", str(supervisor), str(count), "--", *command])  # noqa: S606
