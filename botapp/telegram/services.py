"""Writes the Telegram adapter needs: people on contact, the default bot, update bookkeeping, message ids."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import F, FilteredRelation, Q, QuerySet
from django.utils import timezone, translation

from botapp import hot_path
from botapp.conversations import (
    Begun,
    ReplyRefused,
    Turn,
    chat_conversation,
    lease_let_go,
    lease_token_new,
    turn_accept,
    turn_begin,
)
from botapp.media import image_command, speaks
from botapp.models import (
    AccessPolicy,
    Bot,
    BotUser,
    Conversation,
    Message,
    ProcessedUpdate,
    Profile,
    TelegramIdentity,
)
from botapp.people import language_for, telegram_identity_sync
from botapp.storable import storable_json
from botapp.telegram.selectors import stored_question
from botapp.usage import profile_for

logger = logging.getLogger(__name__)

DEFAULT_BOT_NAME = "default"
# Finished updates are only kept to recognise a redelivery, which Telegram gives up on within a day.
PROCESSED_UPDATE_RETENTION = timedelta(days=7)


@dataclass
class Contact:
    """Who sent an update, as Jarvis knows them, and whether this bot may answer them."""

    bot: Bot
    user: AbstractBaseUser
    identity: TelegramIdentity
    language: str
    allowed: bool
    profile: Profile | None = None


def _bot_read(*, bot_id: int) -> QuerySet[Bot]:
    return Bot.objects.select_related("default_persona").filter(pk=bot_id)


def _identities(bot_id: int) -> QuerySet[TelegramIdentity]:
    # The membership of this bot joined in (one LEFT JOIN), not looked up with EXISTS subqueries.
    return (
        TelegramIdentity.objects.select_related("user__jarvis_profile")
        .annotate(membership=FilteredRelation("bot_memberships", condition=Q(bot_memberships__bot_id=bot_id)))
        .annotate(member_id=F("membership__id"), member_blocked_at=F("membership__blocked_bot_at"))
    )


def _identity_read(*, bot_id: int, telegram_id: int) -> QuerySet[TelegramIdentity]:
    return _identities(bot_id).filter(telegram_id=telegram_id)[:1]


def contact_sync(
    *,
    bot_id: int,
    telegram_id: int,
    username: str | None,
    first_name: str | None,
    last_name: str | None,
    language_code: str | None,
) -> Contact:
    """Create or refresh the person behind an update and their membership of the bot; decide access.

    A person Jarvis knows costs two reads: the bot, then their identity, user, profile and membership at once.
    """
    [bot] = hot_path.instances("contact_bot", _bot_read, bot_id=bot_id)
    found = hot_path.instances("contact_identity", _identity_read, bot_id=bot_id, telegram_id=telegram_id)
    identity = telegram_identity_sync(
        telegram_id=telegram_id,
        username=username,
        first_name=first_name,
        last_name=last_name,
        language_code=language_code,
        identities=_identities(bot_id),
        member_of=bot,
        found=found[0] if found else None,
    )
    if getattr(identity, "member_id", None) is None:
        BotUser.objects.get_or_create(bot=bot, identity=identity)
    elif identity.member_blocked_at is not None:
        # Writing to the bot again means they unblocked it.
        BotUser.objects.filter(bot=bot, identity=identity).update(blocked_bot_at=None)
    user = identity.user
    try:
        profile = user.jarvis_profile
    except Profile.DoesNotExist:
        profile = profile_for(user)
    blocked = profile.is_blocked or not user.is_active
    allowed = not blocked and bot.allows(telegram_id=telegram_id, username=username)
    return Contact(
        bot=bot, user=user, identity=identity, language=language_for(language_code), allowed=allowed, profile=profile
    )


def bot_user_mark_blocked(*, bot_id: int, telegram_id: int) -> None:
    """Remember that a person blocked the bot (Telegram answered 403), so broadcasts skip them."""
    BotUser.objects.filter(bot_id=bot_id, identity__telegram_id=telegram_id, blocked_bot_at__isnull=True).update(
        blocked_bot_at=timezone.now()
    )


def bot_from_environment(*, token: str, allowed_users: str) -> Bot | None:
    """Create or update the "default" bot from TELEGRAM_BOT_TOKEN / TELEGRAM_ALLOWED_USERS; None without a token."""
    token = token.strip()
    if not token:
        return None
    entries = [entry.strip() for entry in allowed_users.replace("\n", ",").split(",") if entry.strip()]
    with transaction.atomic():
        bot = Bot.objects.select_for_update().filter(name=DEFAULT_BOT_NAME).first() or Bot(name=DEFAULT_BOT_NAME)
        try:
            changed = bot.pk is None or bot.token != token
        except ValueError:  # saved under another key: the environment's token replaces it
            changed = True
        if changed:
            bot.token = token
        if entries and "*" not in entries:
            bot.access_policy = AccessPolicy.ALLOWLIST
            bot.allowed_users = ", ".join(entries)
        elif entries or bot.pk is None:
            bot.access_policy = AccessPolicy.OPEN
        # Unset on an existing bot: the policy chosen in the admin stands.
        bot.enabled = True
        bot.save()
    return bot


@dataclass
class Accepted:
    """A chat message taken in: a new turn to answer, or the message and answer stored for it before."""

    conversation: Conversation
    turn: Turn | None = None
    stored: tuple[Message, Message | None] | None = None


def chat_message_accept(
    *,
    bot: Bot,
    telegram_chat_id: int,
    user: AbstractBaseUser,
    telegram_message_id: int,
    text: str,
    attachments: Sequence[dict[str, Any]] = (),
    first_delivery: bool = False,
    lease_token: str = "",
) -> Accepted:
    """Store a chat message and its pending answer in the chat's conversation, unless it was stored before.

    One trip to the database for what the funnel needs before the model is called. Raises ReplyRefused.
    `first_delivery`: the update carrying the message was written down just now, for the first time, and
    this is its first handling, so the message cannot have been stored before. With `lease_token` the
    conversation's lease is taken in the same write (`Turn.leased`), its checks read with it.
    """
    conversation, started = chat_conversation(
        bot=bot, telegram_chat_id=telegram_chat_id, user=user, checks=bool(lease_token), lease_token=lease_token
    )
    if not (started or first_delivery):
        stored = stored_question(conversation=conversation, telegram_message_id=telegram_message_id)
        if stored is not None:
            return Accepted(conversation=conversation, stored=stored)
    turn = turn_accept(
        conversation=conversation,
        text=text,
        sender=user,
        attachments=attachments,
        telegram_message_id=telegram_message_id,
        lease_token=lease_token,
    )
    return Accepted(conversation=conversation, turn=turn)


@dataclass
class UpdateInHand:
    """The update being handled in this task (set by the update processor), for handlers that finish it."""

    update_id: int
    # Written down for the first time by this process, and handled for the first time.
    first_delivery: bool
    done: bool = False


update_in_hand: ContextVar[UpdateInHand | None] = ContextVar("update_in_hand", default=None)


@dataclass
class Taken:
    """A chat message taken in one trip: who sent it, and if they may be served, what was stored and begun."""

    contact: Contact
    accepted: Accepted | None = None
    # The sentence refusing the message (an empty one, say), in the person's language.
    refusal: str | None = None
    speaks: bool = False
    begun: Begun | None = None


def chat_message_take(
    *,
    bot_id: int,
    telegram_id: int,
    username: str | None,
    first_name: str | None,
    last_name: str | None,
    language_code: str | None,
    telegram_chat_id: int,
    telegram_message_id: int,
    text: str,
    first_delivery: bool = False,
) -> Taken:
    """Everything before the model is called, in one trip: the person, the question stored, the lease taken and
    the context built (`contact_sync`, `chat_message_accept`, `turn_begin`).

    An /image turn and an answer to be spoken are stored but not begun: they go their own way.
    """
    contact = contact_sync(
        bot_id=bot_id, telegram_id=telegram_id, username=username, first_name=first_name, last_name=last_name,
        language_code=language_code,
    )  # fmt: skip
    if not contact.allowed:
        return Taken(contact=contact)
    token = lease_token_new()
    begins = image_command(text) is None
    with translation.override(contact.language):
        try:
            accepted = chat_message_accept(
                bot=contact.bot, telegram_chat_id=telegram_chat_id, user=contact.user,
                telegram_message_id=telegram_message_id, text=text, first_delivery=first_delivery,
                lease_token=token if begins else "",
            )  # fmt: skip
        except ReplyRefused as refusal:
            return Taken(contact=contact, refusal=str(refusal))
        turn = accepted.turn
        if turn is None:
            return Taken(contact=contact, accepted=accepted)
        taken = Taken(contact=contact, accepted=accepted, speaks=speaks(accepted.conversation))
        if taken.speaks:
            if turn.leased:
                lease_let_go(conversation_id=accepted.conversation.pk, token=token)
        elif begins:
            taken.begun = turn_begin(turn, token=token, profile=contact.profile)
    return taken


def conversation_voice_switch(*, conversation: Conversation) -> bool:
    """Switch a chat between text and voice-note answers (from the next answer on); True when now speaking."""
    conversation.voice_answers = not speaks(conversation)
    conversation.save(update_fields=["voice_answers"])
    return conversation.voice_answers


def message_reply_ids_store(*, message_id: int, telegram_ids: list[int]) -> None:
    """Remember which Telegram messages show an answer, so a restart edits them instead of sending again."""
    Message.objects.filter(pk=message_id).update(telegram_reply_ids=list(telegram_ids))


def update_record(*, bot_id: int, update_id: int, payload: dict[str, Any]) -> bool:
    """Write an update down before handling it; False when it was seen before (a redelivery)."""
    return bool(updates_record(bot_id=bot_id, updates=[(update_id, payload)]))


def updates_record(*, bot_id: int, updates: Sequence[tuple[int, dict[str, Any]]]) -> list[int]:
    """Write a batch of polled updates down; the ids of those seen for the first time (the rest are redeliveries)."""
    # One INSERT ... ON CONFLICT DO NOTHING: a batch polled twice (a retry) is one batch of redeliveries.
    unique = {update_id: storable_json(payload) for update_id, payload in updates}
    fresh = hot_path.updates_record(bot_id=bot_id, updates=list(unique.items()), now=timezone.now())
    return [update_id for update_id in unique if update_id in fresh]


def update_mark_done(*, bot_id: int, update_id: int) -> None:
    hot_path.update_done(bot_id=bot_id, update_id=update_id)


def answer_delivered(*, message_id: int, telegram_ids: list[int] | None, bot_id: int, update_id: int | None) -> None:
    """An answer is in the chat: remember its Telegram messages and finish the update that asked, in one trip."""
    if telegram_ids is not None:
        hot_path.reply_ids_store(message_id=message_id, telegram_ids=telegram_ids)
    if update_id is not None:
        hot_path.update_done(bot_id=bot_id, update_id=update_id)


def updates_prune(*, bot_id: int) -> int:
    """Forget finished updates too old to be redelivered."""
    cutoff = timezone.now() - PROCESSED_UPDATE_RETENTION
    deleted, _by_model = ProcessedUpdate.objects.filter(
        bot_id=bot_id, state=ProcessedUpdate.State.DONE, created_at__lt=cutoff
    ).delete()
    return deleted
