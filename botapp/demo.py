"""Demo data at scale: people, bots, personas, conversations, messages and their ledger rows, in bulk."""

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
from botapp.usage import price_in_force, usage_record_price

Progress = Callable[[int, int], None]

MESSAGES_PER_USER = 200
MESSAGES_PER_CONVERSATION = 20
# A model with no price row: its ledger rows are unpriced, so the dashboard's warning has something to show.
UNPRICED_MODEL = "llama3.1:8b"

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


@dataclass(frozen=True)
class DemoSummary:
    """What `demo_data_seed` created."""

    users: int
    bots: int
    conversations: int
    messages: int
    usage_records: int


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
) -> DemoSummary:
    """Create about `messages` messages (half answers, each with one ledger row) spread over `days` days."""
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

    people = _people(tag=tag, count=user_count, bots=bots, rng=rng, batch_size=batch_size)
    done = 0
    conversations_made = 0
    records_made = 0
    remaining = messages
    while remaining > 0:
        batch_messages = min(batch_size, remaining)
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
) -> tuple[int, int, int]:
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
        message_rows: list[Message] = []
        ledger_plan: list[tuple[int, Conversation, str, int, int]] = []
        for conversation, (person, persona, unpriced, _channel, _bot, started, turns) in zip(rows, plans, strict=True):
            model = UNPRICED_MODEL if unpriced else _model(persona)
            history = 40
            for turn in range(turns):
                topic = rng.choice(TOPICS)
                at = min(started + timedelta(seconds=turn * 120), now)
                question = rng.choice(QUESTIONS).format(topic=topic)
                answer = rng.choice(ANSWERS).format(topic=topic)
                question_tokens = len(question) // 4 + 1
                answer_tokens = len(answer) // 4 + 1
                history += question_tokens
                message_rows.append(
                    Message(
                        conversation=conversation,
                        role=Role.USER,
                        sender_id=person.user_id,
                        content=question,
                        token_count=question_tokens,
                        created_at=at,
                    )
                )
                failed = rng.random() < 0.01
                message_rows.append(
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
                if not failed:
                    ledger_plan.append((len(message_rows) - 1, conversation, model, history, answer_tokens))
                    history += answer_tokens
        created = Message.objects.bulk_create(message_rows)
        records = []
        for index, conversation, model, input_tokens, output_tokens in ledger_plan:
            message = created[index]
            price = prices.get(model)
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
            usage_record_price(record, price)
            records.append(record)
        UsageRecord.objects.bulk_create(records)
    return len(rows), len(message_rows), len(records)
