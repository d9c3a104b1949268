"""Background jobs in django-q2's sync mode: titles, summaries, the spend report, retention, schedules."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, time, timedelta
from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync
from django.db.models import Sum
from django.utils import timezone, translation
from django_q.conf import Conf
from django_q.models import Schedule, Task
from django_q.tasks import async_task

from botapp import llm, tasks
from botapp.context import history_fit
from botapp.conversations import conversation_reply
from botapp.models import (
    Channel,
    Conversation,
    Message,
    ProcessedUpdate,
    Role,
    TelegramIdentity,
    UsageKind,
    UsageRecord,
)
from botapp.retention import RETENTION_PLACEHOLDER
from botapp.schedules import PERIODIC, schedules_ensure
from botapp.usage import cost_of, format_usd, price_in_force, usage_record_create
from tests.factories import BotFactory, ConversationFactory, UserFactory
from tests.fakes.openai_server import Behaviour
from tests.fakes.telegram_server import FakeTelegram

pytestmark = pytest.mark.django_db

TOKEN = "4242:AAtasks-test-token-000000000000000"


@pytest.fixture(autouse=True)
def q_sync(settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tasks run inline, in this process and transaction (django-q2 reads its Conf once, at import)."""
    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "sync": True}
    monkeypatch.setattr(Conf, "SYNC", True)


@pytest.fixture(scope="module")
def telegram() -> Iterator[FakeTelegram]:
    with FakeTelegram(tokens=[TOKEN]) as server:
        yield server


def add_history(conversation: Conversation, pairs: int, *, words: int = 20) -> list[Message]:
    rows = []
    for number in range(pairs):
        for role, label in ((Role.USER, "question"), (Role.ASSISTANT, "answer")):
            content = f"{label} {number} " + " ".join(f"{label[0]}{number}w{i}" for i in range(words))
            rows.append(
                Message.objects.create(
                    conversation=conversation,
                    role=role,
                    content=content,
                    token_count=llm.count_tokens(content, model="gpt-4o-mini"),
                )
            )
    return rows


def expected_cost(model: str, usage: dict) -> Decimal:
    return cost_of(
        price=price_in_force(model=model),
        input_tokens=usage["prompt_tokens"],
        cached_input_tokens=usage["prompt_tokens_details"]["cached_tokens"],
        output_tokens=usage["completion_tokens"],
    )


# --- Titles ---------------------------------------------------------------------------------------


def test_a_new_conversation_gets_a_short_title_and_the_call_is_billed(fake_openai):
    """The title job names an untitled conversation from its first exchange and records a `title` ledger row."""
    conversation = ConversationFactory()
    add_history(conversation, 1, words=3)
    fake_openai.enqueue(Behaviour(text='Title: "Weekend in Rome."\nmore text'))

    task_id = async_task("botapp.tasks.conversation_title", conversation.pk)

    conversation.refresh_from_db()
    assert conversation.title == "Weekend in Rome"
    request = fake_openai.chat_requests()[0]
    assert "question 0" in request.body["messages"][-1]["content"]
    row = UsageRecord.objects.get(kind=UsageKind.TITLE)
    assert (row.user, row.conversation, row.channel) == (conversation.user, conversation, conversation.channel)
    assert row.input_tokens == request.usage["prompt_tokens"]
    assert row.output_tokens == request.usage["completion_tokens"]
    assert row.cost_usd == expected_cost("gpt-4o-mini", request.usage) > 0
    assert Task.objects.get(id=task_id).success


def test_a_titled_conversation_is_left_alone_without_a_model_call(fake_openai):
    """A title someone already set is never replaced, and nothing is spent finding out."""
    conversation = ConversationFactory(title="Mine")
    add_history(conversation, 1, words=3)

    tasks.conversation_title(conversation.pk)

    conversation.refresh_from_db()
    assert conversation.title == "Mine"
    assert fake_openai.chat_requests() == []
    assert not UsageRecord.objects.exists()


def test_jobs_skip_quietly_without_a_model_provider(settings):
    """With no OPENAI_API_KEY the jobs say why they did nothing instead of failing."""
    settings.OPENAI_API_KEY, settings.OPENAI_BASE_URL = "", None
    settings.CONTEXT_TOKEN_BUDGET = 200
    conversation = ConversationFactory()
    add_history(conversation, 10)

    outcome = tasks.conversation_followups(conversation.pk)

    assert "was not titled" in outcome and "was not summarised" in outcome
    conversation.refresh_from_db()
    assert (conversation.title, conversation.summary) == ("", "")
    assert not UsageRecord.objects.exists()


def test_a_provider_error_in_a_follow_up_is_reported_not_raised(fake_openai):
    """A failed title call leaves the conversation as it was; the outcome names the failure."""
    conversation = ConversationFactory()
    add_history(conversation, 1, words=3)
    fake_openai.enqueue(Behaviour(status=400, error_message="nope"))

    outcome = tasks.conversation_followups(conversation.pk)

    assert "conversation_title failed" in outcome
    conversation.refresh_from_db()
    assert conversation.title == ""
    assert not UsageRecord.objects.exists()


# --- Summaries ------------------------------------------------------------------------------------


def test_history_that_fits_is_not_summarised(fake_openai, settings):
    """Below the context budget the summary job makes no call."""
    settings.CONTEXT_TOKEN_BUDGET = 4000
    conversation = ConversationFactory()
    add_history(conversation, 3)

    outcome = tasks.conversation_summarise(conversation.pk)

    assert "fits its context budget" in outcome
    assert fake_openai.chat_requests() == []
    conversation.refresh_from_db()
    assert conversation.summary_until_id is None


def test_older_history_is_folded_into_the_summary_piece_by_piece(fake_openai, settings):
    """Everything before the newest half-budget is summarised, in requests that each fit, each billed."""
    settings.CONTEXT_TOKEN_BUDGET = 300
    fake_openai.default = Behaviour(text="The person asked many numbered questions.")
    conversation = ConversationFactory()
    history = add_history(conversation, 10)

    tasks.conversation_summarise(conversation.pk)

    conversation.refresh_from_db()
    assert conversation.summary == "The person asked many numbered questions."
    requests = fake_openai.chat_requests()
    assert len(requests) >= 2, "the older history needs more than one request at this budget"
    for request in requests:
        assert llm.count_message_tokens(request.body["messages"], model="gpt-4o-mini") <= 300
    older = [m for m in history if m.id <= conversation.summary_until_id]
    kept = [m for m in history if m.id > conversation.summary_until_id]
    sent = "\n".join(r.body["messages"][-1]["content"] for r in requests)
    assert all(sent.count(m.content) == 1 for m in older)
    assert not any(m.content in sent for m in kept)
    assert kept and kept[-1] == history[-1]
    assert sum(m.token_count + llm.TOKENS_PER_MESSAGE for m in kept) <= 150 or len(kept) == 1
    rows = list(UsageRecord.objects.filter(kind=UsageKind.SUMMARY).order_by("id"))
    assert [(r.input_tokens, r.output_tokens) for r in rows] == [
        (r.usage["prompt_tokens"], r.usage["completion_tokens"]) for r in requests
    ]
    assert sum(r.cost_usd for r in rows) == sum(expected_cost("gpt-4o-mini", r.usage) for r in requests)


def test_the_next_answer_uses_the_summary_instead_of_the_old_messages(fake_openai, settings):
    """After summarising, the funnel sends the summary and the recent messages, not the old ones."""
    settings.CONTEXT_TOKEN_BUDGET = 300
    fake_openai.default = Behaviour(text="Numbered questions so far.")
    conversation = ConversationFactory(title="Numbers")
    history = add_history(conversation, 10)
    tasks.conversation_summarise(conversation.pk)
    fake_openai.reset()

    async_to_sync(conversation_reply)(conversation=conversation, text="What did I ask first?")

    messages = fake_openai.chat_requests()[0].body["messages"]
    assert messages[1] == {
        "role": "system",
        "content": "Summary of the earlier conversation:\nNumbered questions so far.",
    }
    sent = [m["content"] for m in messages]
    assert history[0].content not in sent and history[-1].content in sent


def test_the_summary_job_measures_the_translated_head_the_funnel_sends(fake_openai, settings):
    """For a person whose Telegram speaks Chinese, the job counts the same translated summary heading the model got."""
    settings.CONTEXT_TOKEN_BUDGET = 4000
    person = UserFactory()
    TelegramIdentity.objects.create(user=person, telegram_id=8801, language_code="zh-hans")
    conversation = ConversationFactory(user=person, channel=Channel.TELEGRAM, summary="用户在学习数字。")
    # The Telegram adapter answers this person in their language (botapp.telegram.handlers).
    with translation.override("zh-hans"):
        async_to_sync(conversation_reply)(conversation=conversation, text="第一个问题是什么？")

    sent = fake_openai.chat_requests()[0].body["messages"]
    head = sent[: [m["role"] for m in sent].index("user")]
    assert head[-1]["content"] == "之前对话的摘要：\n用户在学习数字。"
    fit = history_fit(conversation)
    assert fit.head == head
    assert fit.head_tokens == llm.count_message_tokens(head, model=conversation.effective_model)


def test_a_complete_answer_queues_the_title_and_summary_jobs(fake_openai, settings, django_capture_on_commit_callbacks):
    """The funnel queues the follow-ups after commit; a long untitled chat ends up titled and summarised."""
    settings.CONTEXT_TOKEN_BUDGET = 300
    fake_openai.default = Behaviour(text="Short reply")
    conversation = ConversationFactory()
    add_history(conversation, 8)

    with django_capture_on_commit_callbacks(execute=True):
        async_to_sync(conversation_reply)(conversation=conversation, text="One more question")

    conversation.refresh_from_db()
    assert conversation.title == "Short reply"
    assert conversation.summary == "Short reply" and conversation.summary_until_id is not None
    kinds = list(UsageRecord.objects.order_by("id").values_list("kind", flat=True))
    assert kinds[:2] == [UsageKind.CHAT, UsageKind.TITLE]
    assert set(kinds[2:]) == {UsageKind.SUMMARY}
    assert len(kinds) == len(fake_openai.chat_requests())


def test_a_failed_answer_queues_nothing(fake_openai, django_capture_on_commit_callbacks):
    """Only complete answers trigger follow-up work."""
    conversation = ConversationFactory()
    fake_openai.enqueue(Behaviour(status=400, error_message="bad"))

    with django_capture_on_commit_callbacks(execute=True):
        with pytest.raises(Exception, match="rejected"):
            async_to_sync(conversation_reply)(conversation=conversation, text="Hello")

    assert len(fake_openai.chat_requests()) == 1
    conversation.refresh_from_db()
    assert conversation.title == ""


# --- Daily spend report ---------------------------------------------------------------------------


def spend(user, *, when: datetime, output_tokens: int, model: str = "gpt-4o-mini") -> UsageRecord:
    return usage_record_create(
        user=user,
        kind=UsageKind.CHAT,
        model=model,
        channel="web",
        input_tokens=1000,
        output_tokens=output_tokens,
        at=when,
    )


def test_the_daily_report_reaches_every_admin_through_the_default_bot(telegram, settings):
    """Yesterday's exact totals go to each id in ADMIN_TELEGRAM_IDS via the Bot API; today's spend is not in it."""
    telegram.reset()
    telegram.add_bot(TOKEN)
    settings.TELEGRAM_API_BASE_URL = telegram.root_url
    settings.ADMIN_TELEGRAM_IDS = ["111", "222"]
    BotFactory(name="default", token=TOKEN)
    yesterday = timezone.localdate() - timedelta(days=1)
    noon = timezone.make_aware(datetime.combine(yesterday, time(12)))
    alice, bob = UserFactory(username="alice"), UserFactory(username="bob")
    rows = [spend(alice, when=noon, output_tokens=2000), spend(bob, when=noon, output_tokens=500)]
    spend(bob, when=timezone.now(), output_tokens=99999)  # today: tomorrow's report

    outcome = tasks.spend_report_send()

    assert "sent to 2 of 2" in outcome
    total = sum(r.cost_usd for r in rows)
    for chat_id in (111, 222):
        [message] = telegram.messages(TOKEN, chat_id)
        assert f"Jarvis spend report for {yesterday:%Y-%m-%d}" in message.text
        assert f"Total: {format_usd(total)} in 2 model call(s)" in message.text
        assert message.text.index("alice") < message.text.index("bob")


def test_an_admin_who_blocked_the_bot_does_not_stop_the_report(telegram, settings):
    """A refusal for one admin is logged; the others still get the report."""
    telegram.reset()
    telegram.add_bot(TOKEN)
    settings.TELEGRAM_API_BASE_URL = telegram.root_url
    settings.ADMIN_TELEGRAM_IDS = ["333", "444"]
    BotFactory(name="default", token=TOKEN)
    telegram.fail_next("sendMessage", status=403, chat_id=333)

    outcome = tasks.spend_report_send(day=timezone.localdate().isoformat())

    assert "sent to 1 of 2" in outcome
    assert telegram.messages(TOKEN, 333) == [] and len(telegram.messages(TOKEN, 444)) == 1


def test_the_report_waits_out_flood_control(telegram, settings):
    """A 429 from the Bot API is waited out as Telegram asks, and the admin still gets the report."""
    telegram.reset()
    telegram.add_bot(TOKEN)
    settings.TELEGRAM_API_BASE_URL = telegram.root_url
    settings.ADMIN_TELEGRAM_IDS = ["555"]
    BotFactory(name="default", token=TOKEN)
    telegram.fail_next("sendMessage", status=429, retry_after=1, chat_id=555)

    outcome = tasks.spend_report_send()

    assert "sent to 1 of 1" in outcome
    calls = [call for call in telegram.calls("sendMessage") if call.chat_id == 555]
    assert [call.status for call in calls] == [429, 200]
    assert calls[1].time - calls[0].time >= 0.95
    [message] = telegram.messages(TOKEN, 555)
    assert "Jarvis spend report" in message.text


def test_no_report_without_admins_or_bot(settings):
    """Missing settings are named in the outcome rather than raised."""
    settings.ADMIN_TELEGRAM_IDS = []
    assert "ADMIN_TELEGRAM_IDS is empty" in tasks.spend_report_send()
    settings.ADMIN_TELEGRAM_IDS = ["1"]
    assert "no enabled bot" in tasks.spend_report_send()


# --- Retention ------------------------------------------------------------------------------------


def aged(conversation: Conversation, days: int, content: str) -> Message:
    when = timezone.now() - timedelta(days=days)
    message = Message.objects.create(conversation=conversation, role=Role.USER, content=content, created_at=when)
    Conversation.objects.filter(pk=conversation.pk, updated_at__lt=when).update(updated_at=when)
    return message


@pytest.fixture
def old_and_new(db: None) -> dict[str, Conversation | Message]:
    """An abandoned conversation, a living one with old and new messages, the ledger and stored updates."""
    user = UserFactory()
    abandoned = ConversationFactory(user=user, title="Secret plans", updated_at=timezone.now() - timedelta(days=90))
    old_only = aged(abandoned, 90, "my secret from long ago")
    living = ConversationFactory(user=user, title="Today", updated_at=timezone.now() - timedelta(days=90))
    old_in_living = aged(living, 60, "an old confession")
    new_in_living = aged(living, 1, "a fresh question")
    Conversation.objects.filter(pk=living.pk).update(summary="about the confession", summary_until_id=old_in_living.id)
    for message in (old_only, old_in_living, new_in_living):
        usage_record_create(
            user=user,
            kind=UsageKind.CHAT,
            model="gpt-4o-mini",
            channel="web",
            conversation=message.conversation,
            message=message,
            output_tokens=100,
        )
    bot = BotFactory()
    stale = ProcessedUpdate.objects.create(bot=bot, update_id=1, payload={"message": {"text": "x"}})
    ProcessedUpdate.objects.filter(pk=stale.pk).update(created_at=timezone.now() - timedelta(days=60))
    ProcessedUpdate.objects.create(bot=bot, update_id=2, payload={})
    return {"abandoned": abandoned, "living": living, "new": new_in_living, "old": old_in_living}


def ledger_state() -> tuple[int, Decimal]:
    return UsageRecord.objects.count(), UsageRecord.objects.aggregate(total=Sum("cost_usd"))["total"]


def test_retention_is_off_by_default(old_and_new, settings):
    """RETENTION_DAYS=0 removes nothing."""
    settings.RETENTION_DAYS = 0
    assert "off" in tasks.messages_retention()
    assert Message.objects.count() == 3 and ProcessedUpdate.objects.count() == 2


def test_retention_delete_removes_old_messages_and_keeps_the_ledger(old_and_new, settings):
    """Delete mode drops old messages and abandoned conversations; every ledger row and its cost stay."""
    settings.RETENTION_DAYS, settings.RETENTION_MODE = 30, "delete"
    before = ledger_state()

    tasks.messages_retention()

    assert list(Message.objects.values_list("content", flat=True)) == ["a fresh question"]
    assert not Conversation.objects.filter(pk=old_and_new["abandoned"].pk).exists()
    living = Conversation.objects.get(pk=old_and_new["living"].pk)
    assert (living.summary, living.summary_until_id) == ("", None)
    assert ledger_state() == before
    assert list(ProcessedUpdate.objects.values_list("update_id", flat=True)) == [2]


def test_retention_anonymise_blanks_old_text_and_keeps_the_rows(old_and_new, settings):
    """Anonymise mode keeps who/when/tokens but no words, also in titles and summaries built from them."""
    settings.RETENTION_DAYS, settings.RETENTION_MODE = 30, "anonymise"
    before = ledger_state()

    tasks.messages_retention()

    contents = dict(Message.objects.values_list("id", "content"))
    assert contents[old_and_new["new"].id] == "a fresh question"
    assert contents[old_and_new["old"].id] == RETENTION_PLACEHOLDER
    assert list(contents.values()).count(RETENTION_PLACEHOLDER) == 2
    abandoned = Conversation.objects.get(pk=old_and_new["abandoned"].pk)
    assert (abandoned.title, abandoned.summary) == ("", "")
    assert Conversation.objects.get(pk=old_and_new["living"].pk).summary == ""
    assert ledger_state() == before
    assert Message.objects.filter(sender__isnull=False, content=RETENTION_PLACEHOLDER).count() == 0


def test_an_unknown_retention_mode_fails_with_a_sentence(old_and_new, settings):
    """A typo in RETENTION_MODE is reported, and nothing is removed."""
    settings.RETENTION_DAYS, settings.RETENTION_MODE = 30, "shred"
    with pytest.raises(ValueError, match="set it to delete or anonymise"):
        tasks.messages_retention()
    assert Message.objects.count() == 3


# --- Schedules ------------------------------------------------------------------------------------


def test_schedules_are_created_once_and_keep_admin_edits(admin_client):
    """Running the set-up twice makes no duplicates, keeps an admin's changes, and the admin lists them."""
    assert all(created for _name, created in schedules_ensure())
    Schedule.objects.filter(name="Daily spend report").update(schedule_type=Schedule.WEEKLY)

    assert not any(created for _name, created in schedules_ensure())

    assert Schedule.objects.count() == len(PERIODIC)
    assert Schedule.objects.get(name="Daily spend report").schedule_type == Schedule.WEEKLY
    assert Schedule.objects.get(name="Message retention").next_run > timezone.now()
    page = admin_client.get("/admin/django_q/schedule/").content.decode()
    assert "Daily spend report" in page and "Message retention" in page


def test_a_scheduled_job_runs_through_the_cluster_code(settings):
    """The schedule rows point at functions the worker can run: running one by its dotted path works."""
    settings.RETENTION_DAYS = 0
    schedules_ensure()
    schedule = Schedule.objects.get(name="Message retention")

    task_id = async_task(schedule.func)

    assert Task.objects.get(id=task_id).result.startswith("Retention is off")
