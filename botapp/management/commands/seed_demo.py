"""`python manage.py seed_demo --messages N [--ledger-rows M]`: fill the database with realistic demo data, fast."""

from __future__ import annotations

import time
from argparse import ArgumentParser

from django.core.management.base import BaseCommand, CommandError

from botapp.demo import DemoError, demo_data_seed

BAR_WIDTH = 40


class Command(BaseCommand):
    help = (
        "Create demo people, bots, personas, conversations, messages and one ledger row per answer "
        "(bulk inserts in batches), to try the admin and measure it at scale. --ledger-rows adds title and "
        "voice-transcription rows until the ledger has that many."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--messages", type=int, default=10_000, help="How many messages to create (default 10000).")
        parser.add_argument("--users", type=int, default=None, help="How many people (default: one per 200 messages).")
        parser.add_argument("--days", type=int, default=90, help="Spread the messages over this many past days.")
        parser.add_argument("--batch-size", type=int, default=5000, help="Rows per bulk insert (default 5000).")
        parser.add_argument("--seed", type=int, default=None, help="Random seed, for the same data every run.")
        parser.add_argument(
            "--ledger-rows",
            type=int,
            default=None,
            help="Make the ledger this long (within 1%%): a title row per conversation and transcription rows for "
            "a share of the questions, as if sent as voice messages (default: one row per answer).",
        )

    def handle(self, *args: object, **options: object) -> None:
        messages = options["messages"]
        if messages < 2:
            raise CommandError("--messages must be at least 2 (a question and its answer).")
        if options["days"] < 1 or options["batch_size"] < 100:
            raise CommandError("--days must be at least 1 and --batch-size at least 100.")
        if options["users"] is not None and options["users"] < 1:
            raise CommandError("--users must be at least 1.")
        started = time.monotonic()

        def progress(done: int, total: int) -> None:
            filled = BAR_WIDTH * done // total
            elapsed = time.monotonic() - started
            rate = done / elapsed if elapsed else 0
            self.stdout.write(
                f"\r[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done:,}/{total:,} messages, {rate:,.0f}/s",
                ending="",
            )
            self.stdout.flush()

        try:
            summary = demo_data_seed(
                messages=messages,
                users=options["users"],
                days=options["days"],
                batch_size=options["batch_size"],
                seed=options["seed"],
                progress=progress,
                ledger_rows=options["ledger_rows"],
            )
        except DemoError as error:
            raise CommandError(str(error)) from error
        elapsed = time.monotonic() - started
        self.stdout.write("")
        self.stdout.write(
            self.style.SUCCESS(
                f"Created {summary.users:,} people, {summary.bots} bots, {summary.conversations:,} conversations, "
                f"{summary.messages:,} messages and {summary.usage_records:,} ledger rows in {elapsed:.1f} s "
                f"({(summary.messages + summary.usage_records) / elapsed:,.0f} rows/s)."
            )
        )
