"""Shared set-up for the Telegram tests: the fake Bot API, a bot row, and Jarvis running against both."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings as django_settings
from telegram.ext import Application

from botapp.models import Bot, Message, MessageStatus, ProcessedUpdate
from botapp.telegram.application import application_prepare, application_recover, build_application
from tests.factories import BotFactory
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.telegram_server import ChatMessage, FakeTelegram

TOKEN = "123456789:AAFakeTokenForJarvisTests-abcdefghijk"
USERNAME = "jarvis_test_bot"


@pytest.fixture(scope="session")
def telegram_server() -> Iterator[FakeTelegram]:
    with FakeTelegram(tokens=[TOKEN]) as server:
        server.add_bot(TOKEN, username=USERNAME)
        yield server


@pytest.fixture
def telegram(telegram_server: FakeTelegram, settings) -> Iterator[FakeTelegram]:
    """The fake Bot API, emptied, with Jarvis pointed at it."""
    telegram_server.reset()
    settings.TELEGRAM_API_BASE_URL = telegram_server.root_url
    yield telegram_server
    telegram_server.reset()


@dataclass
class Running:
    """Jarvis running one bot in the test's event loop."""

    bot: Bot
    application: Application
    telegram: FakeTelegram
    openai: FakeOpenAI

    def answers(self, chat_id: int) -> list[ChatMessage]:
        return self.telegram.messages(TOKEN, chat_id)

    async def wait_answers(self, chat_id: int, count: int = 1, timeout: float = 10.0) -> list[ChatMessage]:
        """Wait until the bot has `count` messages in the chat and no answer there is still being written."""

        def ready() -> list[ChatMessage]:
            found = self.answers(chat_id)
            return found if len(found) >= count else []

        return await self.telegram.await_for(ready, timeout=timeout)

    async def settled(self, timeout: float = 15.0) -> None:
        """Wait until every update written down is finished and no answer is still pending."""

        @sync_to_async
        def busy() -> bool:
            return (
                ProcessedUpdate.objects.filter(state=ProcessedUpdate.State.RECEIVED).exists()
                or Message.objects.filter(status=MessageStatus.PENDING).exists()
            )

        deadline = time.monotonic() + timeout
        while await busy():
            if time.monotonic() > deadline:
                raise TimeoutError("updates still being handled")
            await asyncio.sleep(0.02)

    async def answered(self, chat_id: int, count: int = 1, timeout: float = 10.0) -> list[ChatMessage]:
        """The bot's messages in the chat once there are `count` and everything under way is finished."""
        await self.wait_answers(chat_id, count, timeout)
        await self.settled(timeout)
        return self.answers(chat_id)


async def start_application(bot: Bot) -> Application:
    application = build_application(bot)
    await application.initialize()
    await application_prepare(application)
    await application.start()
    await application_recover(application)
    await application.updater.start_polling(timeout=1, poll_interval=0)
    return application


async def stop_application(application: Application) -> None:
    if application.updater.running:
        await application.updater.stop()
    if application.running:
        await application.stop()
    await application.shutdown()


@asynccontextmanager
async def running(name: str, telegram: FakeTelegram, openai: FakeOpenAI) -> AsyncIterator[Running]:
    """Jarvis polling `telegram` with an open bot called `name`, talking to `openai`."""
    bot = await sync_to_async(BotFactory)(name=name, token=TOKEN)
    application = await start_application(bot)
    try:
        yield Running(bot=bot, application=application, telegram=telegram, openai=openai)
    finally:
        await stop_application(application)


@pytest.fixture
async def jarvis(telegram: FakeTelegram, fake_openai: FakeOpenAI) -> AsyncIterator[Running]:
    """Jarvis polling the fake Bot API with an open bot, talking to the fake OpenAI server."""
    async with running("test", telegram, fake_openai) as jarvis:
        yield jarvis


@pytest.fixture
async def jarvis_without_drafts(settings, fake_openai: FakeOpenAI) -> AsyncIterator[Running]:
    """Jarvis against a Bot API server from before sendMessageDraft (its own fake, so nothing else learns that)."""
    with FakeTelegram(tokens=[TOKEN], drafts=False) as server:
        server.add_bot(TOKEN, username=USERNAME)
        settings.TELEGRAM_API_BASE_URL = server.root_url
        async with running("old-server", server, fake_openai) as jarvis:
            yield jarvis


def subprocess_env(*, telegram: FakeTelegram, openai: FakeOpenAI, **extra: str) -> dict[str, str]:
    """Environment for `manage.py runbot` as a subprocess, pointed at the test database and the fakes."""
    database = django_settings.DATABASES["default"]
    if database["ENGINE"].endswith("sqlite3"):
        url = f"sqlite:///{database['NAME']}"
    else:
        url = "postgres://{user}@{host}:{port}/{name}".format(
            user=database["USER"] or "postgres",
            host=database["HOST"] or "127.0.0.1",
            port=database["PORT"] or 5432,
            name=database["NAME"],
        )
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "DJANGO_SECRET_KEY": django_settings.SECRET_KEY,
        "DJANGO_DEBUG": "false",
        "OPENAI_API_KEY": "sk-test-key-000000000000",
        "OPENAI_BASE_URL": openai.base_url,
        "TELEGRAM_API_BASE_URL": telegram.root_url,
        "TELEGRAM_BOT_TOKEN": TOKEN,
        "TELEGRAM_ALLOWED_USERS": "",
        "PYTHONUNBUFFERED": "1",
        "LOG_LEVEL": "INFO",
    }
    env.update(extra)
    return env
