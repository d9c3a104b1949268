"""Benchmark: a burst limited by Telegram, not by Jarvis.

The fake Bot API paces like Telegram (about 30 messages a second per bot, one a second per chat; 429 with
`retry_after` beyond that). Every chat sends one message at once to a model that takes 2 s, and the time until
every chat has its answer is divided by the pacing's own floor: the soonest the answers could all arrive (the
model's time, then 30 a second per bot). Cases: one bot with 300 chats, and 10 bots in one `runbot` with 100
chats each. Also the bot process's peak RSS and CPU per message, and on PostgreSQL (`--database-url`) the new
server sessions and the server's CPU per message while the burst is answered.
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from harness import ROOT, AnswerWatch, BotProcess, Scratch, fakes, postgres_database, scratch_database

from tests.fakes.telegram_server import FakeTelegram, Pacing

_chat_ids = itertools.count(10_000)
PACING = Pacing()


def _extra_tokens(count: int) -> tuple[str, ...]:
    return tuple(f"{444_000 + n}:pacing-bench-token-{n:020d}" for n in range(count))


def _bots_add(scratch: Scratch, tokens: tuple[str, ...]) -> None:
    """More enabled, open bots beside the one TELEGRAM_BOT_TOKEN makes, for `runbot` to run in one process."""
    script = (
        "import sys\n"
        "from botapp.models import AccessPolicy, Bot\n"
        "for n, token in enumerate(sys.argv[1:]):\n"
        "    bot = Bot(name=f'bench-{n}', access_policy=AccessPolicy.OPEN)\n"
        "    bot.token = token\n"
        "    bot.save()\n"
    )
    subprocess.run(
        [sys.executable, "-c", f"import django; django.setup()\n{script}", *tokens],
        cwd=ROOT,
        env=scratch.env(DJANGO_SETTINGS_MODULE="jarvis_site.settings"),
        check=True,
    )


class PostgresWatch:
    """Sessions opened on the bench database and CPU its server backends spent, from pg_stat_* and /proc."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.connection = psycopg.connect(url, autocommit=True)
        self.ticks = os.sysconf("SC_CLK_TCK")

    def sessions(self) -> int:
        row = self.connection.execute(
            "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
        return int(row[0])

    def backend_cpu(self) -> dict[int, float]:
        """CPU seconds of each server backend on this database but this watcher's own."""
        rows = self.connection.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
        cpu = {}
        for (pid,) in rows:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # the backend ended meanwhile
                continue
            cpu[pid] = (int(fields[11]) + int(fields[12])) / self.ticks
        return cpu

    def close(self) -> None:
        self.connection.close()


@dataclass
class Result:
    messages: int
    makespan: float
    floor: float
    peak_rss_mb: float
    ready_rss_mb: float
    bot_cpu_ms: float
    too_many_requests: int
    new_sessions: int | None = None
    server_cpu_ms: float | None = None


def _wait_polling(telegram: FakeTelegram, tokens: list[str], timeout: float = 90.0) -> None:
    def polling() -> bool:
        polled = {call.token for call in telegram._calls if call.method.lower() == "getupdates"}
        return all(token in polled for token in tokens)

    telegram.wait_for(polling, timeout)


def burst(bots: int, chats: int, model_delay: float, database_url: str | None, processes: int = 1) -> Result:
    """`bots` bots in one runbot, `chats` chats each, every chat one message at once; the fake paces."""
    extra = _extra_tokens(bots - 1)
    with ExitStack() as stack:
        url = stack.enter_context(postgres_database(database_url)) if database_url else None
        scratch = stack.enter_context(scratch_database(url))
        telegram, openai = stack.enter_context(fakes(model_delay, tokens=extra, pacing=PACING))
        if extra:
            _bots_add(scratch, extra)
        bot = BotProcess("jarvis", scratch, telegram, openai, args=("--processes", str(processes)))
        stack.callback(bot.stop)
        tokens = [bot.token, *extra]
        _wait_polling(telegram, tokens)
        watches = {token: AnswerWatch(telegram, token) for token in tokens}
        # Warm-up, one message per bot: imports, connection pools, the first queries.
        warm = {token: next(_chat_ids) for token in tokens}
        for token, chat in warm.items():
            telegram.push_text(token, chat, "warm", user_id=chat)
        for token, chat in warm.items():
            watches[token].wait({chat: "Echo: warm"}, timeout=60 + model_delay)
        watch_pg = PostgresWatch(url) if url else None
        if watch_pg:
            stack.callback(watch_pg.close)
            # PostgreSQL counts a session of a connection still open when its backend next reports (≤ 10 s idle).
            time.sleep(11)
            sessions, server_cpu = watch_pg.sessions(), watch_pg.backend_cpu()
        else:
            time.sleep(1.5)  # the pacing window of the warm-up has passed
        refused = telegram.too_many_requests_count
        ready_rss = bot.peak_rss_mb()
        cpu = bot.cpu_seconds()
        expected: dict[str, dict[int, str]] = {token: {} for token in tokens}
        start = time.time()
        for i in range(chats):
            for token in tokens:
                chat_id = next(_chat_ids)
                expected[token][chat_id] = f"Echo: burst {i}"
                telegram.push_text(token, chat_id, f"burst {i}", user_id=chat_id)
        last = max(max(watches[token].wait(expected[token], timeout=120 + chats).values()) for token in tokens)
        messages = bots * chats
        result = Result(
            messages=messages,
            makespan=last - start,
            floor=PACING.floor(chats, start=model_delay),
            peak_rss_mb=bot.peak_rss_mb(),
            ready_rss_mb=ready_rss,
            bot_cpu_ms=(bot.cpu_seconds() - cpu) / messages * 1000,
            too_many_requests=telegram.too_many_requests_count - refused,
        )
        if watch_pg:
            time.sleep(2)  # the answers' last writes
            after = watch_pg.backend_cpu()
            result.server_cpu_ms = sum(after[pid] - server_cpu.get(pid, 0.0) for pid in after) / messages * 1000
            time.sleep(11)
            result.new_sessions = watch_pg.sessions() - sessions
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-delay", type=float, default=2.0)
    parser.add_argument("--database-url", help="a PostgreSQL server URL; a fresh database is made on it")
    parser.add_argument(
        "--case", nargs="*", default=["1x300", "10x100"], help="BOTSxCHATS (chats per bot); default 1x300 10x100"
    )
    parser.add_argument("--processes", type=int, default=1, help="runbot --processes N: the bots shared among N")
    args = parser.parse_args()
    database = "PostgreSQL" if args.database_url else "SQLite"
    if args.processes > 1:
        database += f", runbot --processes {args.processes}"
    print(f"\n## Bursts under Telegram's pacing ({database}; model takes {args.model_delay:g} s)\n")
    print(
        "| bots × chats | messages | makespan s | pacing floor s | makespan / floor | 429s | bot CPU ms/msg "
        "| peak RSS MB (before the burst) | new PG sessions | PG server CPU ms/msg |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for case in args.case:
        bots, chats = (int(n) for n in case.split("x"))
        r = burst(bots, chats, args.model_delay, args.database_url, args.processes)
        sessions = "" if r.new_sessions is None else str(r.new_sessions)
        server = "" if r.server_cpu_ms is None else f"{r.server_cpu_ms:.2f}"
        print(
            f"| {bots} × {chats} | {r.messages} | {r.makespan:.2f} | {r.floor:.2f} | {r.makespan / r.floor:.2f} "
            f"| {r.too_many_requests} | {r.bot_cpu_ms:.1f} | {r.peak_rss_mb:.0f} ({r.ready_rss_mb:.0f}) "
            f"| {sessions} | {server} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
