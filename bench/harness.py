"""Shared machinery for the benchmarks: a scratch database, the fake servers, bot processes and timing."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fakes.openai_server import Behaviour, FakeOpenAI  # noqa: E402
from tests.fakes.telegram_server import FakeTelegram, Pacing  # noqa: E402

JARVIS_TOKEN = "111111:jarvis-bench-token-000000000000000"
BASELINE_TOKEN = "222222:baseline-bench-token-00000000000000"
NULL_TOKEN = "333333:null-bench-token-000000000000000000"
TOKENS = {"jarvis": JARVIS_TOKEN, "baseline": BASELINE_TOKEN, "null": NULL_TOKEN}
ANSWER_METHODS = {"sendmessage", "editmessagetext"}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": percentile(values, 50), "p99": percentile(values, 99), "mean": statistics.fmean(values)}


@dataclass
class Scratch:
    """A throw-away SQLite (or the given) database with Jarvis's schema, and the environment to reach it."""

    directory: Path
    database_url: str

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            **os.environ,
            "DJANGO_SECRET_KEY": "bench-secret-key-" + "x" * 40,
            "DJANGO_DEBUG": "false",
            "DATABASE_URL": self.database_url,
            "LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(ROOT),
        }
        env.update(extra)
        return env


@contextmanager
def scratch_database(database_url: str | None = None) -> Iterator[Scratch]:
    with tempfile.TemporaryDirectory(prefix="jarvis-bench-") as directory:
        url = database_url or f"sqlite:///{directory}/bench.sqlite3"
        scratch = Scratch(Path(directory), url)
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
            cwd=ROOT,
            env=scratch.env(),
            check=True,
        )
        yield scratch


@contextmanager
def postgres_database(server_url: str) -> Iterator[str]:
    """A new, empty PostgreSQL database on the server of `server_url`, dropped afterwards: its own statistics."""
    import psycopg

    name = f"jarvis_bench_{os.getpid()}_{int(time.time())}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield server_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def fakes(
    model_delay: float = 0.0, *, tokens: tuple[str, ...] = (), pacing: Pacing | None = None
) -> Iterator[tuple[FakeTelegram, FakeOpenAI]]:
    telegram = FakeTelegram(tokens=[*TOKENS.values(), *tokens], pacing=pacing or False).start()
    openai = FakeOpenAI().start()
    openai.default = Behaviour(delay=model_delay)
    try:
        yield telegram, openai
    finally:
        openai.stop()
        telegram.stop()


class BotProcess:
    """`manage.py runbot` (Jarvis) or bench/baseline_bot.py, as a subprocess pointed at the fakes."""

    def __init__(
        self,
        kind: str,
        scratch: Scratch,
        telegram: FakeTelegram,
        openai: FakeOpenAI,
        args: tuple[str, ...] = (),
        **extra_env: str,
    ) -> None:
        self.kind = kind
        self.token = TOKENS[kind]
        command = (
            [sys.executable, "manage.py", "runbot", *args]
            if kind == "jarvis"
            else [sys.executable, str(ROOT / "bench" / f"{kind}_bot.py")]
        )
        env = scratch.env(
            TELEGRAM_BOT_TOKEN=self.token,
            TELEGRAM_API_BASE_URL=telegram.root_url,
            TELEGRAM_ALLOWED_USERS="*",
            OPENAI_API_KEY="sk-bench",
            OPENAI_BASE_URL=openai.base_url,
            **extra_env,
        )
        self.log = open(scratch.directory / f"{kind}.log", "w")
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.telegram = telegram

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Ready once it polls for updates."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} exited early; see {self.log.name}")
            if any(c.method.lower() == "getupdates" for c in self.telegram.calls(token=self.token)):
                return
            time.sleep(0.1)
        raise TimeoutError(f"{self.kind} did not start polling")

    def _pids(self) -> list[int]:
        """The bot process and its children (`runbot --processes N` runs the bots in children)."""
        pids = [self.process.pid]
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == self.process.pid:
                    pids.append(int(stat.parent.name))
            except (OSError, IndexError, ValueError):
                continue
        return pids

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the bot's processes have used so far, all their threads included."""
        total = 0
        for pid in self._pids():
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def peak_rss_mb(self) -> float:
        """The peak resident memory of the bot's processes, added up."""
        total = 0.0
        for pid in self._pids():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024
        return total or float("nan")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


class AnswerWatch:
    """Finds, in the fake's record of calls, when each expected answer arrived in its chat."""

    def __init__(self, telegram: FakeTelegram, token: str) -> None:
        self.telegram = telegram
        self.token = token
        self.scanned = 0
        self.arrived: dict[tuple[int, str], float] = {}

    def _scan(self) -> None:
        calls = self.telegram._calls  # read under the fake's lock, without copying thousands of calls
        for call in calls[self.scanned :]:
            if call.token != self.token or call.method.lower() not in ANSWER_METHODS or call.status != 200:
                continue
            try:
                key = (int(call.params.get("chat_id")), str(call.params.get("text", "")).strip())
            except (TypeError, ValueError):
                continue
            self.arrived.setdefault(key, call.time)
        self.scanned = len(calls)

    def wait(self, expected: dict[int, str], timeout: float) -> dict[int, float]:
        """Block until every chat in `expected` has the text it expects; returns chat -> arrival time.

        The texts must be unique per chat within a run (an earlier identical answer would count).
        """

        def done() -> bool:
            self._scan()
            return all((chat, text) in self.arrived for chat, text in expected.items())

        self.telegram.wait_for(done, timeout)
        return {chat: self.arrived[(chat, text)] for chat, text in expected.items()}
