"""The funnel: stored before the model is called, history in the window, exact cost, failures, concurrency."""

import asyncio
import time
from datetime import timedelta
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.core.exceptions import ValidationError
from django.utils import timezone

from botapp import conversations, llm
from botapp.conversations import ReplyFailed, ReplyRefused, conversation_reply
from botapp.models import (
    Channel,
    Message,
    MessageStatus,
    ModelPrice,
    Persona,
    Profile,
    Role,
    UsageKind,
    UsageRecord,
    UsageStatus,
)
from botapp.usage import usage_record_create
from tests.factories import ConversationFactory, PersonaFactory, UserFactory
from tests.fakes.openai_server import Behaviour

pytestmark = pytest.mark.django_db(transaction=True)

GPT_4O_MINI = {"input": Decimal("0.15"), "cached": Decimal("0.075"), "output": Decimal("0.60")}


def expected_cost(usage: dict, prices: dict = GPT_4O_MINI) -> Decimal:
    cached = usage["prompt_tokens_details"]["cached_tokens"]
    return (
        (usage["prompt_tokens"] - cached) * prices["input"]
        + cached * prices["cached"]
        + usage["completion_tokens"] * prices["output"]
    ) / Decimal(1_000_000)


@sync_to_async
def rows(conversation):
    return list(conversation.messages.order_by("id").values_list("role", "content", "status"))


@sync_to_async
def ledger():
    return list(UsageRecord.objects.order_by("id"))


@sync_to_async
def make_conversation(**kwargs):
    return ConversationFactory(**kwargs)


async def test_answer_is_stored_with_usage_and_exact_cost(fake_openai):
    """An answer is stored beside the question, and its ledger row costs exactly usage × price."""
    fake_openai.enqueue(Behaviour(text="Good evening, sir.", cached_tokens=7))
    conversation = await make_conversation()
    reply = await conversation_reply(conversation=conversation, text="Hello Jarvis")

    assert reply.text == "Good evening, sir."
    assert await rows(conversation) == [
        ("user", "Hello Jarvis", "complete"),
        ("assistant", "Good evening, sir.", "complete"),
    ]
    served = fake_openai.chat_requests()[0]
    assert served.body["stream"] is True
    assert served.body["stream_options"] == {"include_usage": True}
    [record] = await ledger()
    assert record.kind == UsageKind.CHAT and record.status == UsageStatus.COMPLETE and not record.estimated
    assert record.input_tokens == served.usage["prompt_tokens"]
    assert record.cached_input_tokens == 7
    assert record.output_tokens == served.usage["completion_tokens"]
    assert record.cost_usd == expected_cost(served.usage)
    assert record.cost_usd > 0
    assert record.input_price_per_mtok == Decimal("0.15")
    assert reply.message.input_tokens == record.input_tokens
    assert reply.message.latency_ms is not None


async def test_deltas_arrive_before_the_answer_is_complete(fake_openai):
    """The caller sees the answer grow piece by piece, in order."""
    fake_openai.enqueue(Behaviour(text="one two three four five six", chunk_chars=4, chunk_delay=0.01))
    conversation = await make_conversation()
    seen: list[str] = []

    async def on_delta(delta: str, text: str) -> None:
        seen.append(text)

    reply = await conversation_reply(conversation=conversation, text="count", on_delta=on_delta)
    assert len(seen) == 7
    assert seen[0] == "one " and seen[-1] == reply.text == "one two three four five six"


async def test_history_is_remembered_across_turns(fake_openai):
    """The second request carries the first question and answer, after the system prompt."""
    conversation = await make_conversation()
    fake_openai.enqueue(Behaviour(text="Your name is Tony."))
    await conversation_reply(conversation=conversation, text="My name is Tony.")
    await conversation_reply(conversation=conversation, text="What is my name?")
    messages = fake_openai.chat_requests()[1].body["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[0]["content"].startswith("You are Jarvis")
    assert messages[1]["content"] == "My name is Tony."
    assert messages[2]["content"] == "Your name is Tony."
    assert messages[3]["content"] == "What is my name?"


@sync_to_async
def fill_history(conversation, pairs: int) -> None:
    for i in range(pairs):
        for role, text in ((Role.USER, f"question {i} " + "word " * 40), (Role.ASSISTANT, f"answer {i} " + "x " * 40)):
            Message.objects.create(
                conversation=conversation, role=role, content=text, token_count=llm.count_tokens(text, model="gpt-4o")
            )


async def test_history_is_trimmed_to_the_token_budget_newest_first(fake_openai, settings):
    """Only the latest messages that fit the budget are sent; the system prompt always is."""
    settings.CONTEXT_TOKEN_BUDGET = 500
    conversation = await make_conversation()
    await fill_history(conversation, 30)
    await conversation_reply(conversation=conversation, text="And now?")
    messages = fake_openai.chat_requests()[0].body["messages"]
    assert messages[0]["role"] == "system" and messages[0]["content"].startswith("You are Jarvis")
    assert messages[-1]["content"] == "And now?"
    assert llm.count_message_tokens(messages, model="gpt-4o-mini") <= 500
    assert 3 < len(messages) < 20
    kept = [m["content"] for m in messages[1:-1]]
    assert kept[-1].startswith("answer 29") and not any(c.startswith("question 0 ") for c in kept)
    # Oldest first after trimming: the kept window is contiguous.
    numbers = [int(c.split()[1]) for c in kept]
    assert numbers == sorted(numbers)


async def test_a_single_message_too_long_for_the_window_is_refused_and_kept(fake_openai, settings):
    """A question that alone exceeds the window is refused with a sentence, stored, and the model is not called."""
    settings.CONTEXT_TOKEN_BUDGET = 200
    conversation = await make_conversation()
    with pytest.raises(ReplyRefused, match="too long for the model"):
        await conversation_reply(conversation=conversation, text="lorem ipsum " * 300)
    assert fake_openai.chat_requests() == []
    stored = await rows(conversation)
    assert stored[0][0] == "user" and stored[0][1].startswith("lorem ipsum") and stored[0][2] == "failed"
    fake_openai.enqueue(Behaviour(text="fine"))
    reply = await conversation_reply(conversation=conversation, text="short one")
    assert reply.text == "fine"
    assert [m["content"] for m in fake_openai.chat_requests()[0].body["messages"][1:]] == ["short one"]


async def test_text_over_the_character_limit_is_refused(fake_openai, settings):
    """A message over MAX_MESSAGE_CHARS is stored but refused without a model call."""
    settings.MAX_MESSAGE_CHARS = 100
    conversation = await make_conversation()
    with pytest.raises(ReplyRefused, match="at most 100"):
        await conversation_reply(conversation=conversation, text="a" * 101)
    assert fake_openai.chat_requests() == []
    assert (await rows(conversation))[0][2] == "failed"


async def test_empty_text_is_refused_and_nothing_is_stored(fake_openai):
    """Whitespace-only text gets a sentence and stores nothing."""
    conversation = await make_conversation()
    with pytest.raises(ReplyRefused, match="empty"):
        await conversation_reply(conversation=conversation, text="   \n ")
    assert await rows(conversation) == []


@sync_to_async
def spend(user, amount: str) -> None:
    usage_record_create(user=user, kind=UsageKind.CHAT, model="gpt-4o", channel=Channel.WEB, output_tokens=0)
    Profile.objects.update_or_create(user=user, defaults={"daily_budget_usd": Decimal(amount)})


async def test_a_spent_daily_budget_refuses_with_the_reset_time(fake_openai, settings):
    """Over the daily budget: refused before the model, told when it resets, message kept."""
    conversation = await make_conversation()
    fake_openai.enqueue(Behaviour(text="word " * 400))
    await conversation_reply(conversation=conversation, text="spend something")
    user = await sync_to_async(lambda: conversation.user)()
    await sync_to_async(Profile.objects.update_or_create)(user=user, defaults={"daily_budget_usd": Decimal("0.0001")})
    with pytest.raises(ReplyRefused) as refused:
        await conversation_reply(conversation=conversation, text="and more")
    # A budget under a cent is shown as it is, not rounded to "$0.00".
    assert "daily budget of $0.0001." in str(refused.value) and "resets at" in str(refused.value)
    assert len(fake_openai.chat_requests()) == 1
    assert (await rows(conversation))[-2:] == [("user", "and more", "failed"), ("assistant", "", "failed")]


async def test_the_monthly_default_budget_from_settings_applies(fake_openai, settings):
    """DEFAULT_MONTHLY_BUDGET_USD applies to people without their own budget; unlimited overrides it."""
    settings.DEFAULT_MONTHLY_BUDGET_USD = "0"
    conversation = await make_conversation()
    with pytest.raises(ReplyRefused, match=r"monthly budget of \$0\. It resets"):
        await conversation_reply(conversation=conversation, text="hi")
    user = await sync_to_async(lambda: conversation.user)()
    await sync_to_async(Profile.objects.filter(user=user).update)(unlimited_budget=True)
    assert (await conversation_reply(conversation=conversation, text="hi again")).text == "Echo: hi again"


async def test_a_blocked_person_is_refused_without_a_model_call(fake_openai):
    """A blocked person gets one sentence and costs nothing."""
    conversation = await make_conversation()
    user = await sync_to_async(lambda: conversation.user)()
    await sync_to_async(Profile.objects.create)(user=user, is_blocked=True)
    with pytest.raises(ReplyRefused, match="not allowed"):
        await conversation_reply(conversation=conversation, text="hello")
    assert fake_openai.chat_requests() == [] and await ledger() == []


async def test_a_provider_failure_is_stored_and_the_next_message_works(fake_openai):
    """Three 500s: the turn is stored as failed with a sentence, nothing billed, and the next turn works."""
    fake_openai.enqueue(*[Behaviour(status=500)] * 3)
    conversation = await make_conversation()
    with pytest.raises(ReplyFailed, match="try again"):
        await conversation_reply(conversation=conversation, text="first")
    assert len(fake_openai.chat_requests()) == 3
    stored = await sync_to_async(lambda: list(conversation.messages.order_by("id")))()
    assert [(m.role, m.status) for m in stored] == [("user", "failed"), ("assistant", "failed")]
    assert "HTTP 500" in stored[1].error
    assert await ledger() == []

    reply = await conversation_reply(conversation=conversation, text="second")
    assert reply.text == "Echo: second"
    # The failed turn does not pollute the next context.
    assert [m["content"] for m in fake_openai.chat_requests()[-1].body["messages"][1:]] == ["second"]


async def test_rate_limits_are_retried_after_the_retry_after_delay(fake_openai):
    """A 429 with Retry-After: 1 is retried after a second, and the answer arrives."""
    fake_openai.enqueue(Behaviour(status=429, retry_after=1, error_code="rate_limit_exceeded"))
    conversation = await make_conversation()
    started = time.monotonic()
    reply = await conversation_reply(conversation=conversation, text="patience")
    requests = fake_openai.chat_requests()
    assert reply.text == "Echo: patience" and len(requests) == 2
    assert requests[1].started - requests[0].started >= 0.95
    assert time.monotonic() - started >= 0.95


async def test_a_rate_limit_that_persists_becomes_a_sentence(fake_openai, settings):
    """When retries run out, the person is told the service is busy."""
    settings.OPENAI_MAX_RETRIES = 1
    fake_openai.enqueue(*[Behaviour(status=429, retry_after=0.1)] * 2)
    conversation = await make_conversation()
    with pytest.raises(ReplyFailed, match="busy"):
        await conversation_reply(conversation=conversation, text="now")


async def test_a_timeout_becomes_a_sentence(fake_openai, settings):
    """A provider that does not answer in time: stored as failed, and the person is told."""
    settings.OPENAI_TIMEOUT = 0.5
    settings.OPENAI_MAX_RETRIES = 0
    # The provider would answer after 3 s: a failure that says "in time" can only come from the 0.5 s limit.
    fake_openai.enqueue(Behaviour(delay=3))
    conversation = await make_conversation()
    with pytest.raises(ReplyFailed, match="did not answer in time"):
        await conversation_reply(conversation=conversation, text="hello?")
    assert (await rows(conversation))[-1][2] == "failed"


async def test_an_unreachable_provider_becomes_a_sentence(fake_openai, settings):
    """Connection refused: the person is told the service cannot be reached."""
    settings.OPENAI_BASE_URL = "http://127.0.0.1:9/v1"
    settings.OPENAI_MAX_RETRIES = 0
    conversation = await make_conversation()
    with pytest.raises(ReplyFailed, match="cannot be reached"):
        await conversation_reply(conversation=conversation, text="anyone?")


async def test_a_stream_cut_midway_is_stored_incomplete_and_billed_on_an_estimate(fake_openai):
    """A broken stream keeps its partial text, marked incomplete, billed from counted tokens."""
    fake_openai.enqueue(Behaviour(text="abcdefgh" * 10, chunk_chars=8, cut_after=3))
    conversation = await make_conversation()
    with pytest.raises(ReplyFailed, match="interrupted") as failed:
        await conversation_reply(conversation=conversation, text="tell me")
    assert failed.value.partial == "abcdefgh" * 3
    answer = await sync_to_async(lambda: conversation.messages.get(role="assistant"))()
    assert answer.status == MessageStatus.INCOMPLETE and answer.content == "abcdefgh" * 3
    [record] = await ledger()
    assert record.status == UsageStatus.INCOMPLETE and record.estimated
    assert record.output_tokens == llm.count_tokens("abcdefgh" * 3, model="gpt-4o-mini")
    messages = fake_openai.chat_requests()[0].body["messages"]
    assert record.input_tokens == llm.count_message_tokens(messages, model="gpt-4o-mini")
    usage = {
        "prompt_tokens": record.input_tokens,
        "completion_tokens": record.output_tokens,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    assert record.cost_usd == expected_cost(usage)
    reply = await conversation_reply(conversation=conversation, text="again")
    assert reply.text == "Echo: again"


async def test_a_cancelled_answer_keeps_its_partial_text_and_cost(fake_openai):
    """Stopping an answer (task cancelled) stores it as incomplete and records its cost once."""
    fake_openai.enqueue(Behaviour(text="x" * 400, chunk_chars=10, chunk_delay=0.05))
    conversation = await make_conversation()
    some_written = asyncio.Event()

    async def on_delta(delta: str, text: str) -> None:
        if len(text) >= 30:
            some_written.set()

    task = asyncio.create_task(conversation_reply(conversation=conversation, text="long story", on_delta=on_delta))
    await asyncio.wait_for(some_written.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    answer = await sync_to_async(lambda: conversation.messages.get(role="assistant"))()
    assert answer.status == MessageStatus.INCOMPLETE
    assert 0 < len(answer.content) < 400
    [record] = await ledger()
    assert record.status == UsageStatus.INCOMPLETE and record.message_id == answer.id
    assert record.output_tokens == llm.count_tokens(answer.content, model="gpt-4o-mini")


async def test_different_conversations_are_answered_in_parallel(fake_openai):
    """Five conversations with a 1 s model do not wait for each other: all five requests are in flight at once."""
    fake_openai.default = Behaviour(delay=1.0)
    conversation_list = [await make_conversation() for _ in range(5)]
    replies = await asyncio.gather(
        *(conversation_reply(conversation=c, text=f"hi {i}") for i, c in enumerate(conversation_list))
    )
    assert [r.text for r in replies] == [f"Echo: hi {i}" for i in range(5)]
    assert fake_openai.max_in_flight == 5


async def test_one_conversation_answers_one_at_a_time_in_order(fake_openai):
    """Two messages in one conversation: answers never overlap and the second sees the first answer."""
    fake_openai.default = Behaviour(delay=0.3)
    conversation = await make_conversation()
    first = await sync_to_async(conversations.turn_accept)(conversation=conversation, text="one")
    second = await sync_to_async(conversations.turn_accept)(conversation=conversation, text="two")
    await asyncio.gather(conversations.turn_answer(first), conversations.turn_answer(second))
    assert fake_openai.max_in_flight == 1
    later = fake_openai.chat_requests()[1]
    assert [m["content"] for m in later.body["messages"][1:]] == ["one", "Echo: one", "two"]
    assert [r[1] for r in await rows(conversation)] == ["one", "Echo: one", "two", "Echo: two"]


async def test_retry_replaces_the_last_answer_in_the_context(fake_openai):
    """/retry answers the last question again; the old answer stays on record but leaves the context."""
    conversation = await make_conversation()
    fake_openai.enqueue(Behaviour(text="first try"), Behaviour(text="second try"))
    await conversation_reply(conversation=conversation, text="question")
    turn = await sync_to_async(conversations.turn_retry)(conversation=conversation)
    reply = await conversations.turn_answer(turn)
    assert reply.text == "second try"
    assert [m["content"] for m in fake_openai.chat_requests()[1].body["messages"][1:]] == ["question"]
    assert await rows(conversation) == [
        ("user", "question", "complete"),
        ("assistant", "first try", "superseded"),
        ("assistant", "second try", "complete"),
    ]
    assert len(await ledger()) == 2


async def test_the_summary_replaces_the_history_it_covers(fake_openai):
    """With a summary, the context has the summary and only the messages after it."""
    conversation = await make_conversation()
    await conversation_reply(conversation=conversation, text="old question")
    last_id = await sync_to_async(lambda: conversation.messages.order_by("-id").first().id)()
    await sync_to_async(type(conversation).objects.filter(pk=conversation.pk).update)(
        summary="The user asked an old question.", summary_until_id=last_id
    )
    await conversation_reply(conversation=conversation, text="new question")
    messages = fake_openai.chat_requests()[1].body["messages"]
    assert messages[1] == {
        "role": "system",
        "content": "Summary of the earlier conversation:\nThe user asked an old question.",
    }
    assert [m["content"] for m in messages[2:]] == ["new question"]


async def test_a_missing_api_key_is_a_sentence_naming_the_variable(settings):
    """No OPENAI_API_KEY: the message is stored and the person is told what to set."""
    settings.OPENAI_API_KEY = ""
    settings.OPENAI_BASE_URL = None
    conversation = await make_conversation()
    with pytest.raises(ReplyFailed, match="OPENAI_API_KEY"):
        await conversation_reply(conversation=conversation, text="hello")
    assert (await rows(conversation))[0][:2] == ("user", "hello")


async def test_an_unknown_model_is_refused_by_the_provider_with_a_sentence(fake_openai):
    """A model the provider does not know: a sentence naming the model."""
    fake_openai.enqueue(Behaviour(status=404, error_code="model_not_found"))
    persona = await sync_to_async(PersonaFactory)(model="gpt-imaginary")
    conversation = await make_conversation(persona=persona)
    with pytest.raises(ReplyFailed, match="gpt-imaginary"):
        await conversation_reply(conversation=conversation, text="hello")


async def test_a_chosen_model_answers_until_an_admin_withdraws_it(fake_openai):
    """A model the person chose answers while offered; once withdrawn, the persona's model answers instead."""
    await ModelPrice.objects.filter(model="gpt-4.1-nano").aupdate(offered=True)
    conversation = await make_conversation(model="gpt-4.1-nano")
    await conversation_reply(conversation=conversation, text="first")
    await ModelPrice.objects.filter(model="gpt-4.1-nano").aupdate(offered=False)
    await conversation_reply(conversation=conversation, text="second")
    assert [served.body["model"] for served in fake_openai.chat_requests()] == ["gpt-4.1-nano", "gpt-4o-mini"]
    models = [record.model async for record in UsageRecord.objects.order_by("id")]
    assert models == ["gpt-4.1-nano", "gpt-4o-mini"]


def test_a_persona_with_an_unpriced_model_does_not_validate(db):
    """Admins cannot save a persona whose model has no price row."""
    persona = Persona(name="Bad", system_prompt="x", model="gpt-imaginary")
    with pytest.raises(ValidationError, match="Model prices"):
        persona.full_clean()
    Persona(name="Good", system_prompt="x", model="gpt-4o").full_clean()


async def test_the_price_in_force_at_the_time_is_used_and_past_costs_stay(fake_openai):
    """A new price applies from its start; rows already in the ledger keep the price they were charged."""
    persona = await sync_to_async(PersonaFactory)(model="gpt-4o")
    conversation = await make_conversation(persona=persona)
    await conversation_reply(conversation=conversation, text="before")
    await sync_to_async(ModelPrice.objects.create)(
        model="gpt-4o", input_per_mtok=Decimal("1"), output_per_mtok=Decimal("2"), valid_from=timezone.now()
    )
    await conversation_reply(conversation=conversation, text="after")
    before, after = await ledger()
    served = fake_openai.chat_requests()
    old = {"input": Decimal("2.50"), "cached": Decimal("1.25"), "output": Decimal("10.00")}
    new = {"input": Decimal("1"), "cached": Decimal("1"), "output": Decimal("2")}
    assert before.cost_usd == expected_cost(served[0].usage, old)
    assert after.cost_usd == expected_cost(served[1].usage, new)


def test_a_dated_model_snapshot_is_priced_as_its_family(db):
    """'gpt-4o-mini-2024-07-18' is charged at gpt-4o-mini's price; an unknown model is flagged unpriced."""
    user = UserFactory()
    known = usage_record_create(
        user=user, kind=UsageKind.CHAT, model="gpt-4o-mini-2024-07-18", channel=Channel.WEB, input_tokens=1_000_000
    )
    assert known.cost_usd == Decimal("0.15") and known.priced
    unknown = usage_record_create(
        user=user, kind=UsageKind.CHAT, model="llama3", channel=Channel.WEB, input_tokens=1_000_000
    )
    assert unknown.cost_usd == 0 and not unknown.priced


def test_the_ledger_is_append_only(db):
    """A usage record can be neither changed nor deleted."""
    record = usage_record_create(user=UserFactory(), kind=UsageKind.CHAT, model="gpt-4o", channel=Channel.WEB)
    record.cost_usd = Decimal("0")
    with pytest.raises(TypeError, match="append-only"):
        record.save()
    with pytest.raises(TypeError, match="append-only"):
        record.delete()
    with pytest.raises(TypeError, match="append-only"):
        UsageRecord.objects.filter(pk=record.pk).update(cost_usd=0)


def test_budget_periods_reset_at_midnight_and_month_start(db):
    """Spend before today does not count against today, and the reset times are the next boundaries."""
    from botapp.usage import budget_periods

    user = UserFactory()
    now = timezone.now()
    yesterday = now - timedelta(days=1, hours=1)
    usage_record_create(
        user=user, kind=UsageKind.CHAT, model="gpt-4o", channel=Channel.WEB, output_tokens=100_000, at=yesterday
    )
    usage_record_create(user=user, kind=UsageKind.CHAT, model="gpt-4o", channel=Channel.WEB, output_tokens=1_000)
    daily, monthly = budget_periods(user=user, now=now)
    assert daily.spent == Decimal("0.01")
    assert daily.resets - now <= timedelta(days=1) and daily.resets > now
    assert monthly.resets.day == 1 and monthly.resets > now


async def test_another_process_answering_holds_the_conversation_until_its_lease_ends(fake_openai):
    """A lease held elsewhere (another machine) makes this answer wait; a lapsed lease does not."""
    conversation = await make_conversation()
    Conversation = type(conversation)  # noqa: N806
    held = Conversation.objects.filter(pk=conversation.pk)
    await held.aupdate(answering_until=timezone.now() + timedelta(seconds=30), answering_token="elsewhere")
    task = asyncio.create_task(conversation_reply(conversation=conversation, text="wait for it"))
    await asyncio.sleep(0.5)
    assert not task.done() and fake_openai.chat_requests() == []
    await held.aupdate(answering_until=None, answering_token="")
    assert (await asyncio.wait_for(task, 5)).text == "Echo: wait for it"
    assert (await held.aget()).answering_until is None

    await held.aupdate(answering_until=timezone.now() - timedelta(seconds=1), answering_token="crashed")
    reply = await asyncio.wait_for(conversation_reply(conversation=conversation, text="lapsed"), 5)
    assert reply.text == "Echo: lapsed"


async def test_leases_of_a_bot_are_released_for_a_restarting_poller(fake_openai):
    """After a crash, the bot's own leases can be freed at start-up so recovery need not wait."""
    from botapp.conversations import leases_release
    from tests.factories import BotFactory

    bot = await sync_to_async(BotFactory)()
    conversation = await make_conversation(bot=bot, channel=Channel.TELEGRAM, telegram_chat_id=5)
    other = await make_conversation()
    for c in (conversation, other):
        await type(c).objects.filter(pk=c.pk).aupdate(answering_until=timezone.now() + timedelta(minutes=1))
    assert await sync_to_async(leases_release)(bot=bot) == 1
    assert (await type(other).objects.aget(pk=other.pk)).answering_until is not None
