"""`manage.py runbot`: configuration, a clean stop on SIGTERM, and exactly-once answers across a crash."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from botapp.models import AccessPolicy, Bot, Message, MessageStatus, ProcessedUpdate, Role
from botapp.telegram.services import bot_from_environment
from tests.fakes.openai_server import Behaviour, FakeOpenAI
from tests.fakes.telegram_server import FakeTelegram
from tests.telegram_support import TOKEN, subprocess_env

pytest_plugins = ["tests.telegram_support"]

ROOT = Path(__file__).resolve().parent.parent


class BotProcess:
    """`manage.py runbot` in a subprocess, its output collected in a file."""

    def __init__(self, tmp_path: Path, env: dict[str, str], name: str = "runbot", args: tuple[str, ...] = ()) -> None:
        self.log_path = tmp_path / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "runbot", *args],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            if self.process.poll() is not None:
                raise AssertionError(f"runbot exited with {self.process.returncode}:\n{self.output}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not logged within {timeout} s:\n{self.output}")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            for child in children_of(self.process.pid):  # `--processes` children run in sessions of their own
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            self.process.kill()
            self.process.wait(10)
        self._log.close()


@pytest.fixture
def processes():
    """Bot processes started by a test, killed at the end whatever happens."""
    started: list[BotProcess] = []
    yield started
    for process in started:
        process.kill()


def wait_until(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        time.sleep(0.05)


@pytest.mark.django_db
def test_without_a_token_runbot_says_what_to_set(settings):
    """No TELEGRAM_BOT_TOKEN and no bot in the admin: a CommandError naming the variable."""
    settings.TELEGRAM_BOT_TOKEN = ""
    with pytest.raises(CommandError, match="TELEGRAM_BOT_TOKEN"):
        call_command("runbot")


@pytest.mark.django_db
def test_unknown_bot_name_is_a_command_error(settings):
    """--bot with a name that is not an enabled bot is a CommandError that says so."""
    settings.TELEGRAM_BOT_TOKEN = TOKEN
    with pytest.raises(CommandError, match="no enabled bot named 'other'"):
        call_command("runbot", bot="other")


@pytest.mark.django_db
def test_environment_token_creates_and_updates_the_default_bot():
    """TELEGRAM_BOT_TOKEN makes a "default" bot; TELEGRAM_ALLOWED_USERS turns it into an allowlist."""
    bot = bot_from_environment(token=TOKEN, allowed_users="")
    assert (bot.name, bot.token, bot.access_policy) == ("default", TOKEN, AccessPolicy.OPEN)
    assert TOKEN not in bot.token_hint
    bot = bot_from_environment(token="42:AAanother-token-value-0000000000", allowed_users="123, @Ann")
    assert Bot.objects.count() == 1
    assert (bot.token, bot.access_policy) == ("42:AAanother-token-value-0000000000", AccessPolicy.ALLOWLIST)
    assert bot.allows(telegram_id=123, username=None) and bot.allows(telegram_id=9, username="ann")
    assert not bot.allows(telegram_id=9, username="bob")
    assert bot_from_environment(token=TOKEN, allowed_users="*").access_policy == AccessPolicy.OPEN
    assert bot_from_environment(token="", allowed_users="") is None


@pytest.mark.django_db(transaction=True)
def test_runbot_answers_warns_when_open_and_stops_cleanly_on_sigterm(
    tmp_path, telegram: FakeTelegram, fake_openai: FakeOpenAI, processes
):
    """The process answers, logs that the bot is open and how to restrict it, never logs the token, and on
    SIGTERM finishes the answer under way before exiting with status 0."""
    bot = BotProcess(tmp_path, subprocess_env(telegram=telegram, openai=fake_openai))
    processes.append(bot)
    bot.wait_for_log("Jarvis is running")
    assert "is open" in bot.output and "TELEGRAM_ALLOWED_USERS" in bot.output
    fake_openai.enqueue(Behaviour(text="Finished before stopping", delay=2.0))
    telegram.push_text(TOKEN, 901, "Take your time")
    wait_until(lambda: fake_openai.in_flight, what="the model call to start")
    assert bot.stop(signal.SIGTERM) == 0
    [answer] = telegram.messages(TOKEN, 901)
    assert answer.text == "Finished before stopping"
    assert "Stopped." in bot.output
    assert TOKEN.split(":", 1)[1] not in bot.output
    assert "Traceback" not in bot.output


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("moment", ["before the first words", "in the middle of the answer"])
def test_message_is_answered_exactly_once_after_a_crash(
    tmp_path, telegram: FakeTelegram, fake_openai: FakeOpenAI, processes, moment: str
):
    """SIGKILL while the model is answering; after the restart the message is answered, exactly once."""
    env = subprocess_env(telegram=telegram, openai=fake_openai)
    first = BotProcess(tmp_path, env, "first")
    processes.append(first)
    first.wait_for_log("Jarvis is running")
    if moment == "before the first words":
        fake_openai.enqueue(Behaviour(text="too late", delay=30.0))
    else:
        fake_openai.enqueue(Behaviour(text="a b c d e f g h i j k l m n o p", chunk_chars=2, chunk_delay=3.0))
    telegram.push_text(TOKEN, 902, "Please answer")
    wait_until(lambda: fake_openai.in_flight, what="the model call to start")
    if moment == "in the middle of the answer":
        # In a private chat the first words are the chat's draft: ephemeral, so the restart sends the answer anew.
        wait_until(lambda: telegram.drafts(TOKEN, 902), what="the first words to be shown")
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)
    assert Message.objects.get(role=Role.ASSISTANT).status == MessageStatus.PENDING

    fake_openai.enqueue(Behaviour(text="The answer, after the restart."))
    second = BotProcess(tmp_path, env, "second")
    processes.append(second)
    try:
        wait_until(
            lambda: (
                Message.objects.filter(role=Role.ASSISTANT, status=MessageStatus.COMPLETE).exists()
                and not ProcessedUpdate.objects.filter(state=ProcessedUpdate.State.RECEIVED).exists()
            ),
            timeout=30,
            what="the answer to be finished after the restart",
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- first run ---\n{first.output}\n--- second run ---\n{second.output}") from None
    time.sleep(1.5)  # room for a duplicate to show up, if there were one
    assert second.stop(signal.SIGTERM) == 0
    answers = telegram.messages(TOKEN, 902)
    assert [a.text for a in answers] == ["The answer, after the restart."]
    assert Message.objects.filter(role=Role.USER).count() == 1
    [reply] = Message.objects.filter(role=Role.ASSISTANT)
    assert reply.telegram_reply_ids == [answers[0].message_id]
    assert "waiting when Jarvis stopped" in second.output


@pytest.mark.django_db(transaction=True)
def test_runbot_opens_no_database_connection_per_message(tmp_path, telegram: FakeTelegram, fake_openai, processes):
    """Answering keeps its connections (django-q2 closed them twice per answer): sessions do not grow per message."""
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL counts the sessions a process opens; SQLite has no connections to count")

    def sessions() -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
            return cursor.fetchone()[0]

    bot = BotProcess(tmp_path, subprocess_env(telegram=telegram, openai=fake_openai))
    processes.append(bot)
    bot.wait_for_log("Jarvis is running")
    telegram.push_text(TOKEN, 990, "warm up")
    wait_until(lambda: telegram.messages(TOKEN, 990), what="the first answer")
    wait_until(lambda: not Message.objects.filter(status=MessageStatus.PENDING).exists(), what="the answer stored")
    before = sessions()
    for number in range(10):
        telegram.push_text(TOKEN, 991 + number, f"message {number}")
    wait_until(
        lambda: all(telegram.messages(TOKEN, 991 + number) for number in range(10)), timeout=60, what="ten answers"
    )
    wait_until(lambda: not Message.objects.filter(status=MessageStatus.PENDING).exists(), what="the answers stored")
    # Ten messages used to open twenty. A few may still show up: PostgreSQL counts a session when the backend
    # next reports its statistics, which for connections opened at start-up can be after `before` was read.
    assert sessions() - before <= 5
    assert bot.stop() == 0


SECOND_TOKEN = "5550001:second-bot-token-0000000000000000000"


def children_of(pid: int) -> list[int]:
    """The processes whose parent is `pid`, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def two_bots(telegram: FakeTelegram):
    """The environment's bot and a second, open one that the fake Bot API serves too."""
    telegram.add_bot(SECOND_TOKEN)
    second = Bot(name="second", access_policy=AccessPolicy.OPEN)
    second.token = SECOND_TOKEN
    second.save()
    return second


@pytest.mark.django_db(transaction=True)
def test_bots_shared_among_processes_are_each_answered_and_stop_together(
    tmp_path, telegram: FakeTelegram, fake_openai: FakeOpenAI, processes, two_bots
):
    """`runbot --processes 2` with two bots: two child processes run one bot each, both bots answer, and SIGTERM
    to the parent stops both children and the parent with status 0."""
    bot = BotProcess(tmp_path, subprocess_env(telegram=telegram, openai=fake_openai), args=("--processes", "2"))
    processes.append(bot)
    wait_until(lambda: bot.output.count("Jarvis is running 1 bot(s)") == 2, timeout=60, what="two children running")
    children = children_of(bot.process.pid)
    assert len(children) == 2
    telegram.push_text(TOKEN, 920, "to the first")
    telegram.push_text(SECOND_TOKEN, 921, "to the second")
    wait_until(lambda: telegram.messages(TOKEN, 920) and telegram.messages(SECOND_TOKEN, 921), what="both answers")
    assert [m.text for m in telegram.messages(SECOND_TOKEN, 921)] == ["Echo: to the second"]
    assert bot.stop(signal.SIGTERM) == 0
    assert not any(alive(child) for child in children)
    assert "Traceback" not in bot.output


@pytest.mark.django_db(transaction=True)
def test_a_shared_bot_process_that_dies_stops_the_others_with_an_error(
    tmp_path, telegram: FakeTelegram, fake_openai: FakeOpenAI, processes, two_bots
):
    """When one child dies by itself, the parent stops the other and exits with an error, for the process
    manager to restart the whole set."""
    bot = BotProcess(tmp_path, subprocess_env(telegram=telegram, openai=fake_openai), args=("--processes", "2"))
    processes.append(bot)
    wait_until(lambda: bot.output.count("Jarvis is running 1 bot(s)") == 2, timeout=60, what="two children running")
    first, other = children_of(bot.process.pid)
    os.kill(first, signal.SIGKILL)
    assert bot.process.wait(30) != 0
    wait_until(lambda: not alive(other), what="the other child to stop")
    assert "exited by itself" in bot.output
