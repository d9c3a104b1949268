"""Demo data at scale: people, bots, personas, conversations, messages and their ledger rows, in bulk.

By default the ledger gets a chat row per answer. Asked for a number of ledger rows, it also gets what the
title job and voice messages charge: a title row per conversation and transcription rows for enough questions.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.db import connection, transaction
from django.db.models import Max
from django.utils import timezone

from botapp.models import (
    AccessPolicy,
    Bot,
    BotUser,
    Channel,
    Conversation,
    Message,
    MessageStatus,
    ModelPrice,
    Persona,
    Profile,
    Role,
    TelegramIdentity,
    UsageKind,
    UsageRecord,
    UsageStatus,
)
from botapp.search import messages_index
from botapp.summaries import TITLE_PROMPT
from botapp.usage import price_in_force, usage_record_price

Progress = Callable[[int, int], None]

MESSAGES_PER_USER = 200
MESSAGES_PER_CONVERSATION = 20
# A model with no price row: its ledger rows are unpriced, so the dashboard's warning has something to show.
UNPRICED_MODEL = "llama3.1:8b"
# Share of answers the model provider failed to give: no ledger row for those.
FAILED_SHARE = 0.01
# A title is at most six words; its ledger row's output tokens lie in this range.
TITLE_OUTPUT_TOKENS = (3, 9)
# What a chat request adds to the tokens of its texts (roles, separators, the reply's priming).
REQUEST_OVERHEAD_TOKENS = 7

DEMO_PERSONAS = [
    ("Jarvis", "gpt-4o-mini", "You are Jarvis, a helpful, concise assistant."),
    ("Coder", "gpt-4.1-mini", "You are a senior engineer. Answer with working code and short explanations."),
    ("Translator", "gpt-4o", "Translate what the user writes between English and Simplified Chinese."),
]
FIRST_NAMES = ["Ada", "Alan", "Grace", "Linus", "Mei", "Wei", "Olga", "Ravi", "Sofia", "Tomás", "Yuki", "Zara"]
LAST_NAMES = ["Lovelace", "Turing", "Hopper", "Chen", "Ivanova", "Patel", "García", "Tanaka", "Okafor", ""]
TOPICS = [
    "a birthday message for my sister",
    "how to undo the last git commit",
    "the difference between TCP and UDP",
    "a vegetarian dinner for four",
    "why my Django migration conflicts",
    "a polite email asking for a deadline extension",
    "the capital of Australia",
    "how compound interest works",
    "a haiku about autumn rain",
    "translating 'good morning' into Chinese",
    "a SQL query for the top 10 customers",
    "what to pack for a week in Lisbon",
    # Words the search benchmark looks for (bench/admin_bench.py), in English and in Chinese.
    "a hello world program in Go",
    "公司的年假政策",
]
QUESTIONS = [
    "Can you help me with {topic}?",
    "Explain {topic} in two sentences.",
    "I need {topic}, quickly please.",
    "What do you know about {topic}?",
    "Give me three ideas for {topic}.",
]
ANSWERS = [
    "Sure. Here is a short answer about {topic}: start simple, check the result, then refine it.",
    "Of course! For {topic}, the key points are:\n\n1. Be clear.\n2. Be brief.\n3. Check your facts.",
    "Here you go — {topic}:\n\n```\nstep 1: think\nstep 2: write\n```\n\nAnything else?",
    "Good question. In short, {topic} comes down to a couple of ideas; let me know if you want details.",
]


class DemoError(ValueError):
    """Demo data that cannot be made as asked; the message is a sentence saying why."""


@dataclass(frozen=True)
class DemoSummary:
    """What `demo_data_seed` created."""

    users: int
    bots: int
    conversations: int
    messages: int
    usage_records: int


def ledger_rows_range(messages: int) -> tuple[int, int]:
    """About the fewest and the most ledger rows `messages` demo messages can carry when a total is asked for.

    The fewest: a chat row per answer that did not fail and a title row per conversation; the most adds a
    transcription row for every question. Estimated from the shares the generator draws with, which is well
    within the 1 % a requested total is met to.
    """
    questions = messages // 2
    fewest = round(questions * (1 - FAILED_SHARE)) + max(round(messages / MESSAGES_PER_CONVERSATION), 1)
    return fewest, fewest + questions


def _personas() -> list[Persona]:
    personas = []
    for name, model, prompt in DEMO_PERSONAS:
        persona, _created = Persona.objects.get_or_create(name=name, defaults={"model": model, "system_prompt": prompt})
        personas.append(persona)
    return personas


def _model(persona: Persona) -> str:
    return persona.model or settings.OPENAI_MODEL


def _bots(tag: str, personas: list[Persona]) -> list[Bot]:
    bots = []
    for index, persona in enumerate(personas[:2]):
        bot = Bot(
            name=f"Demo bot {tag}-{index + 1}",
            default_persona=persona,
            telegram_username=f"demo_{tag}_{index + 1}_bot",
            access_policy=AccessPolicy.OPEN,
            # Made-up tokens: `runbot` (and so `./jarvis up`) must never try to start these.
            enabled=False,
        )
        bot.token = f"{900_000_000 + index}:DEMO-{secrets.token_urlsafe(24)}"
        bot.save()
        bots.append(bot)
    return bots


def demo_data_seed(
    *,
    messages: int,
    users: int | None = None,
    days: int = 90,
    batch_size: int = 5000,
    seed: int | None = None,
    progress: Progress | None = None,
    ledger_rows: int | None = None,
) -> DemoSummary:
    """Create about `messages` messages (half answers, each with one ledger row) spread over `days` days.

    `ledger_rows`: make the ledger that long instead, adding title and transcription rows (see the module's
    docstring); raises DemoError, before creating anything, if `messages` cannot carry that many.
    """
    if ledger_rows is not None:
        fewest, most = ledger_rows_range(messages)
        if not fewest <= ledger_rows <= most:
            raise DemoError(
                f"{messages:,} messages carry about {fewest:,} to {most:,} ledger rows (a chat row per answer, a "
                f"title row per conversation and at most one transcription per question), not {ledger_rows:,}: "
                "ask for a number in that range or for more messages."
            )
    rng = random.Random(seed)
    tag = secrets.token_hex(3)
    now = timezone.now()
    user_count = users or max(messages // MESSAGES_PER_USER, 5)
    personas = _personas()
    bots = _bots(tag, personas)
    # Demo rows are dated in the past but priced at today's list prices, which is all a demo needs.
    prices: dict[str, ModelPrice | None] = {
        _model(persona): price_in_force(model=_model(persona)) for persona in personas
    }
    prices[UNPRICED_MODEL] = None
    prices[settings.OPENAI_TRANSCRIPTION_MODEL] = price_in_force(model=settings.OPENAI_TRANSCRIPTION_MODEL)

    people = _people(tag=tag, count=user_count, bots=bots, rng=rng, batch_size=batch_size)
    done = 0
    conversations_made = 0
    records_made = 0
    remaining = messages
    while remaining > 0:
        batch_messages = min(batch_size, remaining)
        target = None
        if ledger_rows is not None:
            # Each batch aims at its share of the total so far: what one batch falls short, the next makes up.
            target = round(ledger_rows * min(done + batch_messages, messages) / messages) - records_made
        made_conversations, made_messages, made_records = _conversation_batch(
            people=people,
            bots=bots,
            personas=personas,
            prices=prices,
            messages=batch_messages,
            conversations=max(round(batch_messages / MESSAGES_PER_CONVERSATION), 1),
            now=now,
            days=days,
            rng=rng,
            ledger_target=target,
        )
        conversations_made += made_conversations
        records_made += made_records
        done += made_messages
        remaining -= made_messages
        if progress:
            progress(done, messages)
    if connection.vendor == "postgresql":
        # Bulk loads leave the planner without statistics until autovacuum gets round to them; pages
        # read right after would be planned as if the tables were empty.
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
    return DemoSummary(len(people), len(bots), conversations_made, done, records_made)


@dataclass(frozen=True)
class _Person:
    user_id: int
    telegram_id: int
    username: str


def _people(*, tag: str, count: int, bots: list[Bot], rng: random.Random, batch_size: int) -> list[_Person]:
    user_model = get_user_model()
    # One hash for everyone: hashing a password per person would dominate the run time.
    password = make_password(None)
    first_telegram_id = (TelegramIdentity.objects.aggregate(top=Max("telegram_id"))["top"] or 10_000_000) + 1
    people: list[_Person] = []
    for start in range(0, count, batch_size):
        size = min(batch_size, count - start)
        with transaction.atomic():
            created = user_model.objects.bulk_create(
                [
                    user_model(
                        username=f"demo-{tag}-{start + index}",
                        first_name=rng.choice(FIRST_NAMES),
                        last_name=rng.choice(LAST_NAMES),
                        password=password,
                    )
                    for index in range(size)
                ]
            )
            identities = TelegramIdentity.objects.bulk_create(
                [
                    TelegramIdentity(
                        user=user,
                        telegram_id=first_telegram_id + start + index,
                        username=f"{user.first_name.lower()}_{tag}_{start + index}",
                        first_name=user.first_name,
                        last_name=user.last_name,
                        language_code=rng.choice(["en", "en", "zh-hans"]),
                    )
                    for index, user in enumerate(created)
                ]
            )
            Profile.objects.bulk_create(
                [
                    Profile(
                        user=user,
                        is_blocked=rng.random() < 0.01,
                        monthly_budget_usd=rng.choice([None, None, Decimal("5"), Decimal("20")]),
                    )
                    for user in created
                ]
            )
            BotUser.objects.bulk_create(
                [
                    BotUser(
                        bot=bot,
                        identity=identity,
                        blocked_bot_at=timezone.now() if rng.random() < 0.02 else None,
                    )
                    for identity in identities
                    for bot in bots
                    if bot is bots[0] or rng.random() < 0.3
                ]
            )
        people += [
            _Person(user.pk, identity.telegram_id, user.username)
            for user, identity in zip(created, identities, strict=True)
        ]
    return people


@dataclass
class _Batch:
    """One batch's unsaved messages and, by index into them, the answers and questions the ledger charges."""

    messages: list[Message]
    # Answer index, conversation, model, input tokens, output tokens: a chat row each.
    answers: list[tuple[int, Conversation, str, int, int]]
    # First complete answer index of each conversation, its model and the title job's input tokens.
    titles: list[tuple[int, Conversation, str, int]]
    # Question index and conversation: the questions that may have been sent as voice messages.
    questions: list[tuple[int, Conversation]]


def _conversation_batch(
    *,
    people: list[_Person],
    bots: list[Bot],
    personas: list[Persona],
    prices: dict[str, ModelPrice | None],
    messages: int,
    conversations: int,
    now: datetime,
    days: int,
    rng: random.Random,
    ledger_target: int | None = None,
) -> tuple[int, int, int]:
    """Create a batch's conversations, messages and ledger rows; return how many of each.

    Without `ledger_target` the ledger gets a chat row per answer. With it, a title row per conversation too
    and transcription rows for as many questions as it takes to make `ledger_target` rows.
    """
    span = timedelta(days=days).total_seconds()
    plans = []
    # Split the batch's messages over its conversations, two per turn (question and answer).
    turns_left = max(messages // 2, 1)
    for index in range(conversations):
        turns = turns_left if index == conversations - 1 else max(1, min(turns_left, rng.randint(2, 18)))
        turns_left -= turns
        if turns <= 0:
            break
        person = rng.choice(people)
        persona = rng.choice(personas)
        unpriced = rng.random() < 0.02
        channel = Channel.TELEGRAM if rng.random() < 0.7 else Channel.WEB
        bot = rng.choice(bots) if channel == Channel.TELEGRAM else None
        started = now - timedelta(seconds=rng.random() * span)
        plans.append((person, persona, unpriced, channel, bot, started, turns))
        if turns_left <= 0:
            break
    with transaction.atomic():
        rows = Conversation.objects.bulk_create(
            [
                Conversation(
                    user_id=person.user_id,
                    channel=channel,
                    bot=bot,
                    telegram_chat_id=person.telegram_id if bot else None,
                    title=rng.choice(TOPICS).capitalize(),
                    persona=None if unpriced else persona,
                    model=UNPRICED_MODEL if unpriced else "",
                    # Old demo chats are closed so the one-active-per-chat rule holds.
                    is_active=False,
                    created_at=started,
                    updated_at=min(started + timedelta(minutes=2 * turns), now),
                )
                for person, persona, unpriced, channel, bot, started, turns in plans
            ]
        )
        batch = _Batch(messages=[], answers=[], titles=[], questions=[])
        for conversation, (person, persona, unpriced, _channel, _bot, started, turns) in zip(rows, plans, strict=True):
            model = UNPRICED_MODEL if unpriced else _model(persona)
            _conversation_messages(batch, conversation, person, model, started, turns, now, rng)
        created = Message.objects.bulk_create(batch.messages)
        messages_index(*created)
        records = _chat_records(created, batch.answers, prices, rng)
        if ledger_target is not None:
            records += _title_records(created, batch.titles, prices, now, rng)
            voiced = _voice_questions(batch.questions, ledger_target - len(records), rng)
            records += _transcription_records(created, voiced, prices, rng)
        UsageRecord.objects.bulk_create(records)
    return len(rows), len(batch.messages), len(records)


def _conversation_messages(
    batch: _Batch,
    conversation: Conversation,
    person: _Person,
    model: str,
    started: datetime,
    turns: int,
    now: datetime,
    rng: random.Random,
) -> None:
    """Add a conversation's questions and answers to `batch`, noting what the ledger will charge for them."""
    history = 40
    first_question = ""
    titled = False
    for turn in range(turns):
        topic = rng.choice(TOPICS)
        at = min(started + timedelta(seconds=turn * 120), now)
        question = rng.choice(QUESTIONS).format(topic=topic)
        answer = rng.choice(ANSWERS).format(topic=topic)
        first_question = first_question or question
        question_tokens = len(question) // 4 + 1
        answer_tokens = len(answer) // 4 + 1
        history += question_tokens
        batch.messages.append(
            Message(
                conversation=conversation,
                role=Role.USER,
                sender_id=person.user_id,
                content=question,
                token_count=question_tokens,
                created_at=at,
            )
        )
        batch.questions.append((len(batch.messages) - 1, conversation))
        failed = rng.random() < FAILED_SHARE
        batch.messages.append(
            Message(
                conversation=conversation,
                role=Role.ASSISTANT,
                content="" if failed else answer,
                status=MessageStatus.FAILED if failed else MessageStatus.COMPLETE,
                error="The model provider did not answer in time." if failed else "",
                token_count=0 if failed else answer_tokens,
                input_tokens=0 if failed else history,
                output_tokens=0 if failed else answer_tokens,
                latency_ms=rng.randint(300, 4000),
                model=model,
                created_at=at + timedelta(seconds=rng.randint(1, 20)),
            )
        )
        if failed:
            continue
        answer_index = len(batch.messages) - 1
        batch.answers.append((answer_index, conversation, model, history, answer_tokens))
        history += answer_tokens
        if not titled:
            # The title job runs after the first complete answer, on the first question and that answer.
            batch.titles.append((answer_index, conversation, model, _title_input_tokens(first_question, answer)))
            titled = True


def _title_input_tokens(question: str, answer: str) -> int:
    """The tokens of the title job's request, counted the demo's way (four characters a token)."""
    transcript = f"Person: {question}\n\nJarvis: {answer}"
    return len(TITLE_PROMPT) // 4 + len(transcript) // 4 + 2 + REQUEST_OVERHEAD_TOKENS


def _chat_records(
    created: list[Message],
    answers: list[tuple[int, Conversation, str, int, int]],
    prices: dict[str, ModelPrice | None],
    rng: random.Random,
) -> list[UsageRecord]:
    """A chat row per complete answer, as the funnel charges it; about a third reused a cached prompt."""
    records = []
    for index, conversation, model, input_tokens, output_tokens in answers:
        message = created[index]
        cached = input_tokens // 2 if rng.random() < 0.3 else 0
        record = UsageRecord(
            user_id=conversation.user_id,
            conversation=conversation,
            message=message,
            channel=conversation.channel,
            bot=conversation.bot,
            model=model,
            kind=UsageKind.CHAT,
            input_tokens=input_tokens,
            cached_input_tokens=cached,
            output_tokens=output_tokens,
            status=UsageStatus.COMPLETE,
            created_at=message.created_at,
        )
        records.append(usage_record_price(record, prices.get(model)))
    return records


def _title_records(
    created: list[Message],
    titles: list[tuple[int, Conversation, str, int]],
    prices: dict[str, ModelPrice | None],
    now: datetime,
    rng: random.Random,
) -> list[UsageRecord]:
    """A title row per conversation, like botapp.summaries' title job: the chat model, no message, a short answer."""
    records = []
    for index, conversation, model, input_tokens in titles:
        # The job is queued when the answer is stored and runs a few seconds later.
        at = min(created[index].created_at + timedelta(seconds=rng.randint(1, 10)), now)
        record = UsageRecord(
            user_id=conversation.user_id,
            conversation=conversation,
            channel=conversation.channel,
            bot=conversation.bot,
            model=model,
            kind=UsageKind.TITLE,
            input_tokens=input_tokens,
            output_tokens=rng.randint(*TITLE_OUTPUT_TOKENS),
            status=UsageStatus.COMPLETE,
            created_at=at,
        )
        records.append(usage_record_price(record, prices.get(model)))
    return records


def _voice_questions(
    questions: list[tuple[int, Conversation]], count: int, rng: random.Random
) -> list[tuple[int, Conversation]]:
    """Pick `count` questions to have been voice messages: Telegram ones first, as only the bot takes recordings.

    Web questions are voiced only when a batch needs more transcriptions than it has Telegram questions.
    """
    count = max(0, min(count, len(questions)))
    telegram = [question for question in questions if question[1].channel == Channel.TELEGRAM]
    if count <= len(telegram):
        return rng.sample(telegram, count)
    web = [question for question in questions if question[1].channel != Channel.TELEGRAM]
    return telegram + rng.sample(web, count - len(telegram))


def _transcription_records(
    created: list[Message],
    voiced: list[tuple[int, Conversation]],
    prices: dict[str, ModelPrice | None],
    rng: random.Random,
) -> list[UsageRecord]:
    """A transcription row per voiced question, priced by the audio minute as `audio_transcribe` charges it."""
    model = settings.OPENAI_TRANSCRIPTION_MODEL
    records = []
    for index, conversation in voiced:
        question = created[index]
        # Speech runs at about 2.5 words a second; people pause before and while they speak.
        milliseconds = len(question.content.split()) * 400 + rng.randint(500, 6000)
        record = UsageRecord(
            user_id=conversation.user_id,
            conversation=conversation,
            message=question,
            channel=conversation.channel,
            bot=conversation.bot,
            model=model,
            kind=UsageKind.TRANSCRIPTION,
            audio_seconds=Decimal(milliseconds).scaleb(-3),
            status=UsageStatus.COMPLETE,
            # The recording is transcribed just before its text is stored as the question.
            created_at=question.created_at,
        )
        records.append(usage_record_price(record, prices.get(model)))
    return records
