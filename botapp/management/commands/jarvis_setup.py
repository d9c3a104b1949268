"""`manage.py jarvis_setup`: what `./jarvis up` does before starting the processes (safe to run every time)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import redis
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, connection

from botapp.bootstrap import admin_ensure, bots_configured, processes_to_run, settings_advice
from botapp.schedules import schedules_ensure
from botapp.telegram.services import bot_from_environment
from botapp.tools.services import tools_setup


def _database_label() -> str:
    database = settings.DATABASES["default"]
    if database["ENGINE"].endswith("sqlite3"):
        return f"SQLite file {database['NAME']}"
    # Host and name only: the URL may carry a password.
    return f"{connection.vendor} database {database.get('NAME')} on {database.get('HOST') or 'localhost'}"


class Command(BaseCommand):
    help = (
        "Prepare Jarvis to run: migrate, collect static files, create the default bot from TELEGRAM_BOT_TOKEN, "
        "an admin account when there is none, the tools (SEARXNG_URL, MCP_SERVERS) and the periodic schedules; "
        "then say what is missing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--processes-file",
            metavar="PATH",
            help="Write the Procfile entries to start on this machine (web worker [bot]) to PATH.",
        )
        parser.add_argument("--skip-static", action="store_true", help="Do not collect static files.")

    def say(self, text: str) -> None:
        self.stdout.write(f"jarvis: {text}")

    def warn(self, text: str) -> None:
        self.stdout.write(self.style.WARNING(f"jarvis: {text}"))

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            call_command("migrate", interactive=False, verbosity=0, stdout=io.StringIO())
        except DatabaseError as exc:
            reason = str(exc).strip().rstrip(".?")
            raise CommandError(
                f"Cannot prepare the {_database_label()}: {reason}. Check that the database is running and that "
                "DATABASE_URL in .env is right."
            ) from exc
        self.say(f"database ready ({_database_label()})")
        if not options["skip_static"]:
            call_command("collectstatic", interactive=False, verbosity=0, stdout=io.StringIO())
            self.say("static files collected")

        try:
            bot_from_environment(token=settings.TELEGRAM_BOT_TOKEN, allowed_users=settings.TELEGRAM_ALLOWED_USERS)
        except ValueError as exc:
            # The stored token no longer decrypts: the key changed. Say so; the rest can still start.
            self.warn(f"The default bot was not updated from TELEGRAM_BOT_TOKEN: {exc}")
        self._admin_account()
        tools = tools_setup()
        for line in tools.done:
            self.say(f"tools: {line}")
        for problem in tools.problems:
            self.warn(problem)
        names = [name for name, _created in schedules_ensure()]
        self.say(f"schedules ready: {', '.join(names)} (admin: Background tasks > Scheduled tasks)")
        if settings.REDIS_URL:
            try:
                redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=5).ping()
            except redis.RedisError as exc:
                reason = str(exc).rstrip(".")
                raise CommandError(
                    f"Cannot reach Redis at REDIS_URL: {reason}. Start Redis, fix REDIS_URL in .env, or leave it "
                    "empty to use the database as the task queue."
                ) from exc
            self.say("task queue: Redis")
        else:
            self.say("task queue: the database (set REDIS_URL to use Redis)")
        bots = bots_configured()
        if bots:
            self.say(f"Telegram: starting {len(bots)} bot(s): {', '.join(bot.name for bot in bots)}")
        for advice in settings_advice():
            self.warn(advice)

        if options["processes_file"]:
            Path(options["processes_file"]).write_text(" ".join(processes_to_run()) + "\n")

    def _admin_account(self) -> None:
        account = admin_ensure(
            username=os.environ.get("DJANGO_SUPERUSER_USERNAME", ""),
            email=os.environ.get("DJANGO_SUPERUSER_EMAIL", ""),
            password=os.environ.get("DJANGO_SUPERUSER_PASSWORD", ""),
        )
        host = os.environ.get("HOST", "127.0.0.1")
        if host in ("0.0.0.0", "::", ""):  # noqa: S104 (only shown as an address to type into a browser)
            host = "127.0.0.1"
        url = f"http://{host}:{os.environ.get('PORT', '8000')}/admin/"
        if account.conflict:
            self.warn(
                f"There is no admin account, and the name {account.username!r} is taken by a normal account. "
                "Create one with: ./jarvis manage createsuperuser"
            )
        elif not account.created:
            self.say(f"admin: sign in at {url} as {account.username!r}")
        elif account.generated_password:
            self.say(
                f"admin account created: sign in at {url} as {account.username!r} with the password "
                f"{account.generated_password}  (shown only now; change it in the admin under Users)"
            )
        else:
            self.say(
                f"admin account created: sign in at {url} as {account.username!r} with the password from "
                "DJANGO_SUPERUSER_PASSWORD"
            )
