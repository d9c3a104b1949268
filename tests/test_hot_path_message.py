"""What one Telegram message costs end to end: SQL statements and thread hops, from the update to the answer.

A message goes through python-telegram-bot, the funnel, the ledger and the lease against the fake Bot API and
the fake OpenAI server, exactly as in production. Everything the bot sends to the database is counted (every
statement through Django's cursor, BEGIN included on SQLite) together with every `sync_to_async` call, from
the moment the update is pushed until the bot has finished with it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal

import pytest
from asgiref.sync import SyncToAsync, sync_to_async
from django.db.backends import utils as db_utils

from botapp.models import Conversation, Message, MessageStatus, ProcessedUpdate, Role, UsageRecord
from tests.telegram_support import TOKEN, Running

logger = logging.getLogger(__name__)

pytest_plugins = ["tests.telegram_support"]
pytestmark = pytest.mark.django_db(transaction=True)

# What a message costs now (before issue 16's work: 34 statements and 8 hops for a fresh chat, 23 and 8 for a
# known person). Issue 16 asks for 12, 8 and 3; what stands between is in the hot path's module docstring.
# One of them makes the question and its answer searchable (botapp.search), in the transaction storing the answer.
FRESH_CHAT_STATEMENTS, KNOWN_PERSON_STATEMENTS, HOPS = 24, 16, 4


@dataclass
class Cost:
    """The statements and `sync_to_async` calls seen while counting."""

    statements: list[str] = field(default_factory=list)
    hops: list[str] = field(default_factory=list)
    counting: bool = False

    def __str__(self) -> str:
        lines = [f"{len(self.statements)} statements, {len(self.hops)} hops"]
        lines += [f"  hop: {name}" for name in self.hops]
        lines += [f"  sql: {sql[:160]}" for sql in self.statements]
        return "\n".join(lines)


@pytest.fixture
def cost(monkeypatch: pytest.MonkeyPatch) -> Iterator[Cost]:
    """Counts every statement any connection runs, and every `sync_to_async` call, while `cost.counting`."""
    seen = Cost()
    execute = db_utils.CursorWrapper._execute_with_wrappers
    call = SyncToAsync.__call__

    def counted_execute(self, sql, params, many, executor):  # type: ignore[no-untyped-def]
        if seen.counting:
            seen.statements.append(sql)
        return execute(self, sql, params, many, executor)

    async def counted_call(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if seen.counting:
            function = getattr(self.func, "func", self.func)
            seen.hops.append(getattr(function, "__qualname__", repr(function)))
        return await call(self, *args, **kwargs)

    monkeypatch.setattr(db_utils.CursorWrapper, "_execute_with_wrappers", counted_execute)
    monkeypatch.setattr(SyncToAsync, "__call__", counted_call)
    yield seen


async def _idle(jarvis: Running, timeout: float = 15.0) -> None:
    """Wait, without touching the database, until the bot holds no chat and has no update queued."""
    processor = jarvis.application.update_processor
    deadline = time.monotonic() + timeout
    while processor._locks or not jarvis.application.update_queue.empty():
        if time.monotonic() > deadline:
            raise TimeoutError("the bot is still handling an update")
        await asyncio.sleep(0.01)


async def _message_cost(jarvis: Running, cost: Cost, *, chat_id: int, user_id: int, text: str) -> Cost:
    """Push one message, wait for its answer and for the bot to finish with it; what that cost."""
    before = len(jarvis.answers(chat_id))
    cost.statements.clear()
    cost.hops.clear()
    cost.counting = True
    try:
        jarvis.telegram.push_text(TOKEN, chat_id, text, user_id=user_id)
        await jarvis.wait_answers(chat_id, before + 1)
        await _idle(jarvis)
    finally:
        cost.counting = False
    assert jarvis.answers(chat_id)[-1].text == f"Echo: {text}"
    return Cost(statements=list(cost.statements), hops=list(cost.hops))


@sync_to_async
def _stored(chat_id: int) -> list[tuple[str, str, str, bool]]:
    rows = Message.objects.filter(conversation__telegram_chat_id=chat_id).order_by("id")
    return [(m.role, m.content, m.status, bool(m.telegram_reply_ids) or m.role == Role.USER) for m in rows]


async def test_a_fresh_chat_and_a_known_person_stay_within_their_statements_and_hops(jarvis: Running, cost: Cost):
    """A new person's first message costs at most 24 statements and 4 hops; their next one, in the conversation
    titled meanwhile, at most 16 and 4; both
    are stored, answered, billed once at the price in force and their updates finished."""
    await _message_cost(jarvis, cost, chat_id=7001, user_id=7001, text="warm up")  # imports, connections
    fresh = await _message_cost(jarvis, cost, chat_id=7002, user_id=7002, text="Hello Jarvis")
    # In steady state a worker has titled the conversation after its first answer (no follow-up job queued again).
    await Conversation.objects.filter(telegram_chat_id=7002).aupdate(title="Greetings")
    known = await _message_cost(jarvis, cost, chat_id=7002, user_id=7002, text="And again")
    logger.info("fresh chat: %s\nknown person: %s", fresh, known)
    assert len(fresh.statements) <= FRESH_CHAT_STATEMENTS, f"fresh chat: {fresh}"
    assert len(fresh.hops) <= HOPS, f"fresh chat: {fresh}"
    assert len(known.statements) <= KNOWN_PERSON_STATEMENTS, f"known person: {known}"
    assert len(known.hops) <= HOPS, f"known person: {known}"

    assert await _stored(7002) == [
        (Role.USER, "Hello Jarvis", MessageStatus.COMPLETE, True),
        (Role.ASSISTANT, "Echo: Hello Jarvis", MessageStatus.COMPLETE, True),
        (Role.USER, "And again", MessageStatus.COMPLETE, True),
        (Role.ASSISTANT, "Echo: And again", MessageStatus.COMPLETE, True),
    ]
    records = [
        record
        async for record in UsageRecord.objects.filter(conversation__telegram_chat_id=7002).select_related("price")
    ]
    assert len(records) == 2
    for record in records:
        assert record.price is not None and record.input_price_per_mtok == record.price.input_per_mtok
        assert record.cost_usd > Decimal("0") and record.input_tokens > 0 and record.output_tokens > 0
    assert not await ProcessedUpdate.objects.filter(state=ProcessedUpdate.State.RECEIVED).aexists()
