"""Benchmark 4: the admin at scale. `seed_demo` fills a scratch database (`--messages` messages and a ledger of
`--ledger-rows` rows), then the changelists and the usage dashboard are rendered by a staff user: time (median
of several renders) and query count per page. The search boxes of conversations and messages are timed for an
English and a Chinese word (the demo's topics hold both), and so is a person's own search on the web page.

`--databases sqlite postgres` (the default) runs on a scratch SQLite file and a scratch PostgreSQL database.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid

from harness import ROOT, Scratch, scratch_database

PAGES = {
    "conversations": "/admin/botapp/conversation/",
    "messages": "/admin/botapp/message/",
    "usage records": "/admin/botapp/usagerecord/",
    "users": "/admin/auth/user/",
    "usage dashboard (30 days)": "/admin/botapp/usagerecord/dashboard/",
    "conversations: search hello": "/admin/botapp/conversation/?q=hello",
    "conversations: search 年假": "/admin/botapp/conversation/?q=%E5%B9%B4%E5%81%87",
    "conversations: search a word no one says": "/admin/botapp/conversation/?q=zanzibar",
    "messages: search hello": "/admin/botapp/message/?q=hello",
    "messages: search 年假": "/admin/botapp/message/?q=%E5%B9%B4%E5%81%87",
    "messages: search a word no one says": "/admin/botapp/message/?q=zanzibar",
}
# Rendered for the person with the most recent conversation, on the web page.
PERSON_PAGES = {
    "own search: hello": "/search/?q=hello",
    "own search: 年假": "/search/?q=%E5%B9%B4%E5%81%87",
    "own search: a word no one says": "/search/?q=zanzibar",
}

COUNT = """
import django
django.setup()
from botapp.models import Message
print(Message.objects.count())
"""

RENDER = """
import json, statistics, sys, time
import django
django.setup()
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from botapp.models import Conversation, UsageRecord

pages = json.loads(sys.argv[1])
person_pages = json.loads(sys.argv[3])
repeats = int(sys.argv[2])
User = get_user_model()
staff, _ = User.objects.get_or_create(username="bench-staff", defaults={"is_staff": True, "is_superuser": True})
clients = {"staff": Client(), "person": Client()}
clients["staff"].force_login(staff)
conversation = Conversation.objects.order_by("-id").first()
clients["person"].force_login(conversation.user)
pages["conversation detail"] = f"/admin/botapp/conversation/{conversation.pk}/change/"
from datetime import timedelta
from django.utils import timezone
today = timezone.localdate()
pages["usage dashboard (90 days)"] = (
    f"/admin/botapp/usagerecord/dashboard/?start={today - timedelta(days=89)}&end={today}"
)
results = {}
pages = {name: ("staff", url) for name, url in pages.items()}
pages.update({name: ("person", url) for name, url in person_pages.items()})
for name, (who, url) in pages.items():
    client = clients[who]
    client.get(url)  # warm: imports, template loading, the dashboard's cache of finished days
    times = []
    for _ in range(repeats):
        with CaptureQueriesContext(connection) as queries:
            started = time.perf_counter()
            response = client.get(url)
            times.append(time.perf_counter() - started)
        assert response.status_code == 200, (url, response.status_code)
    results[name] = {"ms": statistics.median(times) * 1000, "queries": len(queries)}
print(json.dumps({"ledger_rows": UsageRecord.objects.count(), "pages": results}))
"""


def run(database_url: str | None, messages: int, ledger_rows: int, repeats: int) -> tuple[float, dict[str, object]]:
    """Seed a scratch database, render the pages; return the seeding time and the rendering script's figures."""
    with scratch_database(database_url) as scratch:
        env = scratch.env(DJANGO_SETTINGS_MODULE="jarvis_site.settings", DJANGO_ALLOWED_HOSTS="testserver")
        started = time.monotonic()
        seed = ["seed_demo", "--messages", str(messages), "--ledger-rows", str(ledger_rows), "--seed", "7"]
        subprocess.run([sys.executable, "manage.py", *seed], cwd=ROOT, env=env, check=True)
        seeded = time.monotonic() - started
        return seeded, render(env, repeats)


def render(env: dict[str, str], repeats: int) -> dict[str, object]:
    """The rendering script's figures for the database `env` points at."""
    output = subprocess.run(
        [sys.executable, "-c", RENDER, json.dumps(PAGES), str(repeats), json.dumps(PERSON_PAGES)],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def report(label: str, messages: int, seeded: float | None, results: dict[str, object]) -> None:
    seeding = f"seed_demo took {seeded:.0f} s" if seeded is not None else "seeded before"
    print(
        f"\n## 4. Admin at scale on {label}: {messages:,} messages and {results['ledger_rows']:,} ledger rows "
        f"({seeding})\n"
    )
    print("| page | median ms | queries |\n|---|---:|---:|")
    for name, figures in results["pages"].items():
        print(f"| {name} | {figures['ms']:.0f} | {figures['queries']} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument(
        "--ledger-rows",
        type=int,
        default=1_000_000,
        help="ledger rows seed_demo makes (about 0.55 to 1.05 per message)",
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--databases",
        nargs="+",
        choices=["sqlite", "postgres"],
        default=["sqlite", "postgres"],
        help="PostgreSQL: a scratch database on 127.0.0.1:5432 as user postgres",
    )
    parser.add_argument(
        "--seeded",
        metavar="DATABASE_URL",
        help="render against this database, seeded before (seed_demo), instead of seeding scratch ones",
    )
    args = parser.parse_args()

    if args.seeded:
        env = Scratch(ROOT, args.seeded).env(
            DJANGO_SETTINGS_MODULE="jarvis_site.settings", DJANGO_ALLOWED_HOSTS="testserver"
        )
        counted = subprocess.run(
            [sys.executable, "-c", COUNT], cwd=ROOT, env=env, check=True, capture_output=True, text=True
        )
        label = "PostgreSQL" if args.seeded.startswith("postgres") else "SQLite"
        report(label, int(counted.stdout.strip().splitlines()[-1]), None, render(env, args.repeats))
        return
    runs = [("SQLite", None)] if "sqlite" in args.databases else []
    database = f"jarvis_bench_{uuid.uuid4().hex[:8]}"
    postgres = "postgres" in args.databases
    if postgres:
        runs.append(("PostgreSQL", f"postgres://postgres@127.0.0.1:5432/{database}"))
        subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "postgres", database], check=True)
    try:
        for label, url in runs:
            seeded, results = run(url, args.messages, args.ledger_rows, args.repeats)
            report(label, args.messages, seeded, results)
    finally:
        if postgres:
            subprocess.run(
                ["dropdb", "-h", "127.0.0.1", "-U", "postgres", "--if-exists", database],
                check=False,
                env={**os.environ},
            )


if __name__ == "__main__":
    main()
