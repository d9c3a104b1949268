"""`manage.py runbot`: run the Telegram bots by long polling."""

from __future__ import annotations

import asyncio
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

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
        connections_keep()
        try:
            asyncio.run(bots_run(bots))
        except BotsNotStarted as exc:
            raise CommandError(str(exc)) from exc
