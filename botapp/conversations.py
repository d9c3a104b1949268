"""The funnel: one user message in, one persisted and priced assistant answer out, for every channel.

An answer is one or more rounds: the model is called, and when it asks for tools they are stored, run and
their results sent back, until it answers in words or the rounds run out (botapp.tools.limits). Each model
call is its own ledger row, billed once; what the model is sent is built in botapp.context.

Every answer is two steps: a sync call stores the question and a pending answer (a `Turn`), then an async call
answers it. The adapters call exactly these:

- Store a question: `turn_accept` (web; Telegram through `telegram.services.chat_message_accept`),
  `documents_accept` (files, with or without a question; both adapters), `turn_retry` (/retry, Regenerate),
  `turn_edit` (web: a question asked again in other words), `validate_text` (web: before a conversation is
  made for a first message).
- Answer it: `turn_answer` (Telegram, streamed into the chat through `on_delta`/`on_tool`),
  `turn_answer_stream` (web, as an iterator ending in a `StreamEnd`), `turn_draw` (/image, the Draw button).
- Beside an answer: `reply_speak` (a voice note, the play button), `audio_transcribe` (Telegram recordings).
- Conversations: `conversation_start` (/new, the web page's first message), `conversation_for_chat`
  (Telegram: the chat's active conversation).
- Restarts: `turn_for_pending_reply` and `leases_release` (`telegram.application`, when a bot starts).
- Jobs: none call in; after an answer is stored the funnel queues `botapp.tasks.conversation_followups`
  (title, summary) with `transaction.on_commit`. `conversation_reply` (store and answer in one call) is for
  scripts and tests.

Errors: `ReplyRefused` before the model is called (nothing billed), `ReplyFailed` after; `str(error)` is the
sentence to show, `error.partial` the text written before a failure.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing, nullcontext
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from functools import partial
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef, QuerySet
from django.utils import timezone
from django.utils.translation import gettext as _
from django_q.tasks import async_task

from botapp import hot_path, llm, media, search
from botapp.context import (
    Context,
    DocumentsNotReady,
    MessageTooLong,
    context_build,
    images_of,
    persona_of,
    tool_results_fit,
)
from botapp.database import database_retry, is_unavailable
from botapp.documents import context as documents_context
from botapp.documents import services as documents_services
from botapp.models import (
    Bot,
    Channel,
    Conversation,
    MediaFile,
    Message,
    MessageStatus,
    Persona,
    Profile,
    Role,
    Tool,
    ToolCall,
    UsageKind,
    UsageRecord,
    UsageStatus,
)
from botapp.redaction import stored_text_redact
from botapp.selectors import persona_default
from botapp.storable import storable_text
from botapp.tools import limits
from botapp.tools.builtins import person_time_zone
from botapp.tools.records import sources_of, tool_calls_close, tool_calls_interrupt, tool_calls_open, tool_calls_refuse
from botapp.tools.registry import ToolContext
from botapp.tools.runner import Outcome, ToolEvent, calls_run, toolbox_for
from botapp.tools.services import model_tools_unsupported_note
from botapp.usage import budget_refusal, profile_for, usage_record_create

logger = logging.getLogger(__name__)

DeltaCallback = Callable[[str, str], Awaitable[None]]
ToolCallback = Callable[[ToolEvent], Awaitable[None]]


class ReplyError(Exception):
    """No (complete) answer; `str(error)` is the sentence to show the person, `partial` what was written before."""

    def __init__(self, message: str, *, partial: str = "") -> None:
        super().__init__(message)
        self.partial = partial


class ReplyRefused(ReplyError):
    """Refused before calling the model: bad input, a blocked person, a spent budget, a message too long."""


class ReplyFailed(ReplyError):
    """The model call failed or broke off; what was stored says what happened."""


@dataclass
class Turn:
    """A stored user message and the pending answer that reserves its place in the conversation."""

    conversation: Conversation
    user_message: Message
    reply: Message
    # An answer left pending (a crash, a restart): the rounds it already made are carried, not made again.
    resumed: bool = False
    # The conversation's lease was taken when the turn was stored (see `turn_accept`).
    leased: bool = False


@dataclass
class Reply:
    """A stored answer: its text, the ledger row of each model call it made, and its tool calls."""

    message: Message
    # The last model call's ledger row.
    usage: UsageRecord | None
    text: str
    records: list[UsageRecord] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    # Documents the answer was sent, to cite under it.
    documents: list[documents_context.Source] = field(default_factory=list)

    @property
    def cost_usd(self) -> Decimal | None:
        """What the answer's model calls cost together (None: nothing was billed)."""
        if not self.records:
            return None
        return sum((record.cost_usd for record in self.records), Decimal("0"))

    @property
    def sources(self) -> list[dict[str, Any]]:
        """The pages the answer used, to link under it."""
        return sources_of(self.tool_calls, self.text)


# --- Writing the question down --------------------------------------------------------------------


def validate_text(text: str, *, has_attachments: bool = False) -> str:
    """The text to store (NUL and broken characters removed), or ReplyRefused when there is nothing usable."""
    text = storable_text(text or "")
    if not text.strip() and not has_attachments:
        raise ReplyRefused(_("Your message is empty. Write something and send it again."))
    return text


def _tokens_of_question(text: str, *, model: str) -> int:
    # A message over the limit is stored to be refused with a sentence; counting it could take long or fail.
    if len(text) > settings.MAX_MESSAGE_CHARS:
        return len(text) // 4
    return llm.count_tokens(text, model=model)


def turn_accept(
    *,
    conversation: Conversation,
    text: str,
    sender: AbstractBaseUser | None = None,
    attachments: Sequence[dict[str, Any]] = (),
    telegram_message_id: int | None = None,
    lease_token: str = "",
) -> Turn:
    """Store the user's message and a pending answer in one transaction, before anything can fail.

    With `lease_token` the conversation's lease is taken in the same write when it is free (`Turn.leased`);
    a conversation started with that lease (`conversation_start`) is not written again.
    """
    text = validate_text(text, has_attachments=bool(attachments))
    model = conversation.effective_model
    now = timezone.now()
    user_message = Message(
        conversation=conversation,
        role=Role.USER,
        sender=sender or conversation.user,
        content=text,
        attachments=list(attachments),
        token_count=_tokens_of_question(text, model=model) + llm.TOKENS_PER_IMAGE * len(images_of(attachments)),
        telegram_message_id=telegram_message_id,
        created_at=now,
    )
    reply = Message(
        conversation=conversation, role=Role.ASSISTANT, status=MessageStatus.PENDING, model=model, created_at=now
    )
    leased = bool(lease_token) and conversation.answering_token == lease_token
    with transaction.atomic():
        # One INSERT for both, question first: the answer's id follows its question's. (Neither has an error to
        # mask yet, which MessageQuerySet.bulk_create would do.)
        hot_path.insert(user_message, reply)
        if lease_token and not leased:
            leased = hot_path.question_stored(
                conversation_id=conversation.pk, at=now, token=lease_token, until=now + LEASE
            )
        elif not leased:
            Conversation.objects.filter(pk=conversation.pk).update(updated_at=now)
    return Turn(conversation=conversation, user_message=user_message, reply=reply, leased=leased)


@dataclass
class DocumentsAccepted:
    """A message that carried documents, the documents (queued for indexing), and the turn if it asked something."""

    message: Message
    documents: list[Any]
    turn: Turn | None


def documents_accept(
    *,
    conversation: Conversation,
    uploads: Sequence[documents_services.Upload],
    text: str = "",
    sender: AbstractBaseUser | None = None,
    telegram_message_id: int | None = None,
) -> DocumentsAccepted:
    """Store a message with its files, queued for indexing, in one transaction; with text, a pending answer too.

    The text (a Telegram caption) is answered once the files are read; files alone wait for the next message.
    """
    sender = sender or conversation.user
    model = conversation.effective_model
    now = timezone.now()
    text = storable_text(text or "")
    message = Message(
        conversation=conversation,
        role=Role.USER,
        sender=sender,
        content=text,
        token_count=_tokens_of_question(text, model=model),
        telegram_message_id=telegram_message_id,
        created_at=now,
    )
    reply = None
    if text.strip():
        reply = Message(
            conversation=conversation, role=Role.ASSISTANT, status=MessageStatus.PENDING, model=model, created_at=now
        )
    try:
        with transaction.atomic():
            Message.objects.bulk_create([message] if reply is None else [message, reply])
            documents = documents_services.conversation_documents_create(
                conversation=conversation, message=message, uploads=uploads, uploaded_by=sender
            )
            message.attachments = [
                {"type": "document", "document_id": document.pk, "name": document.file_name} for document in documents
            ]
            message.save(update_fields=["attachments"])
            Conversation.objects.filter(pk=conversation.pk).update(updated_at=now)
    except documents_services.UploadRefused as refusal:
        raise ReplyRefused(str(refusal)) from refusal
    turn = Turn(conversation=conversation, user_message=message, reply=reply) if reply is not None else None
    return DocumentsAccepted(message=message, documents=documents, turn=turn)


def turn_retry(*, conversation: Conversation) -> Turn:
    """A new answer to the last question: the previous answer leaves the context but stays on record."""
    with transaction.atomic():
        last_user = conversation.messages.filter(role=Role.USER).order_by("-id").first()
        if last_user is None:
            raise ReplyRefused(_("There is nothing to answer again yet."))
        conversation.messages.filter(role=Role.ASSISTANT, id__gt=last_user.id).exclude(
            status=MessageStatus.PENDING
        ).update(status=MessageStatus.SUPERSEDED)
        if last_user.status != MessageStatus.COMPLETE:
            last_user.status, last_user.error = MessageStatus.COMPLETE, ""
            last_user.save(update_fields=["status", "error"])
        reply = Message.objects.create(
            conversation=conversation,
            role=Role.ASSISTANT,
            status=MessageStatus.PENDING,
            model=conversation.effective_model,
        )
    return Turn(conversation=conversation, user_message=last_user, reply=reply)


def turn_edit(
    *, conversation: Conversation, message_id: int, text: str, sender: AbstractBaseUser | None = None
) -> Turn:
    """Ask again in other words: the question `message_id` and everything after it leave the conversation
    (kept on record as superseded), and the new wording is stored as a new turn to answer.
    """
    text = validate_text(text)
    with transaction.atomic():
        answering = Conversation.objects.filter(pk=conversation.pk, answering_until__gt=timezone.now()).exists()
        if answering:
            raise ReplyRefused(_("Jarvis is still answering in this conversation. Stop the answer, then edit."))
        question = (
            conversation.messages.filter(pk=message_id, role=Role.USER).exclude(status=MessageStatus.SUPERSEDED).first()
        )
        if question is None:
            raise ReplyRefused(_("That message is no longer in this conversation. Reload the page to see it as it is."))
        conversation.messages.filter(id__gte=question.id).exclude(status=MessageStatus.SUPERSEDED).update(
            status=MessageStatus.SUPERSEDED
        )
        return turn_accept(conversation=conversation, text=text, sender=sender, attachments=question.attachments)


def turn_for_pending_reply(reply: Message) -> Turn:
    """Rebuild the turn of an answer left pending (for example by a crash), to answer it now."""
    conversation = Conversation.objects.select_related("persona", "bot", "user").get(pk=reply.conversation_id)
    user_message = conversation.messages.filter(role=Role.USER, id__lt=reply.id).order_by("-id").first()
    if user_message is None:
        raise ReplyRefused(_("There is nothing to answer."))
    return Turn(conversation=conversation, user_message=user_message, reply=reply, resumed=True)


# --- Answering ----------------------------------------------------------------------------------

# One lock per conversation: answers in a conversation never interleave; conversations run side by side.
_locks: weakref.WeakValueDictionary[int, asyncio.Lock] = weakref.WeakValueDictionary()


def _lock_for(conversation_id: int) -> asyncio.Lock:
    lock = _locks.get(conversation_id)
    if lock is None:
        lock = asyncio.Lock()
        _locks[conversation_id] = lock
    return lock


# The lease is renewed while an answer streams; a crashed holder's lease runs out after this long.
LEASE = timedelta(seconds=60)
LEASE_POLL_SECONDS = 0.05


async def _lease_keep(conversation_id: int, token: str) -> None:
    while True:
        await asyncio.sleep(LEASE.total_seconds() / 3)
        try:
            await Conversation.objects.filter(pk=conversation_id, answering_token=token).aupdate(
                answering_until=timezone.now() + LEASE
            )
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            # The answer goes on; the lease is renewed on the next round, or runs out if the database stays away.
            logger.warning("Could not renew the lease of conversation %s: the database is unavailable", conversation_id)


def leases_release(*, bot: Bot) -> int:
    """Free the leases of a bot's conversations: for a poller starting after a crash (it is the only one)."""
    return Conversation.objects.filter(bot=bot, answering_until__isnull=False).update(
        answering_until=None, answering_token=""
    )


def _begin(turn: Turn, token: str, prepare: Callable[[Turn], Any] | None = None, *, taken: bool = False) -> Any:
    """Take the conversation's lease, check the turn and build its context, in one trip to the database.

    None while another process holds the lease; a refused turn is stored as failed and the lease let go.
    `prepare` checks and builds (the chat context by default; a picture's plan for /image turns). `taken`:
    the lease is held already, taken with `token` when the turn was stored.
    """
    now = timezone.now()
    if not taken and not hot_path.lease_take(
        conversation_id=turn.conversation.pk, token=token, now=now, until=now + LEASE
    ):
        return None
    try:
        return (prepare or _check_and_build)(turn)
    except ReplyRefused as refusal:
        with transaction.atomic():
            _refuse(turn, str(refusal))
            _lease_release_now(turn.conversation.pk, token)
        raise
    except BaseException:
        _lease_release_now(turn.conversation.pk, token)
        raise


@dataclass
class Begun:
    """A turn begun in the trip that stored it: its lease taken and context built, or refused (and stored so)."""

    token: str
    context: Context | None = None
    refusal: ReplyRefused | None = None


def lease_token_new() -> str:
    """A token to hold a conversation's lease with."""
    return secrets.token_hex(8)


def turn_begin(turn: Turn, *, token: str, profile: Profile | None = None) -> Begun | None:
    """`turn_answer`'s first step, for a caller already in the database thread: None while the lease is held.

    `token` took the lease when the turn was stored (`turn_accept(lease_token=...)`) if `turn.leased`;
    `profile` is the sender's, read in the same trip. Hand the result to `turn_answer(begun=...)`.
    """
    if not turn.leased:
        return None
    try:
        context = _begin(turn, token, partial(_check_and_build, profile=profile, current=True), taken=True)
    except ReplyRefused as refusal:
        return Begun(token, refusal=refusal)
    return None if context is None else Begun(token, context)


def lease_let_go(*, conversation_id: int, token: str) -> None:
    """Let a conversation's lease go if `token` still holds it (a turn begun that is answered another way)."""
    _lease_release_now(conversation_id, token)


def _lease_release_now(conversation_id: int, token: str) -> None:
    hot_path.lease_release(conversation_id=conversation_id, token=token)


async def _lease_release(conversation_id: int, token: str) -> None:
    # Tried until the lease would have run out anyway.
    await database_retry(_lease_release_now, conversation_id, token, deadline=LEASE.total_seconds())


async def _begin_when_free(turn: Turn, token: str, prepare: Callable[[Turn], Any] | None = None) -> Any:
    """`_begin` the turn as soon as the conversation's lease is free (polling); what `prepare` built."""
    try:
        while True:
            prepared = await sync_to_async(_begin)(turn, token, prepare)
            if prepared is not None:
                return prepared
            await asyncio.sleep(LEASE_POLL_SECONDS)
    except ReplyRefused:
        raise
    except BaseException:
        # Cancelled, or the database failed after the lease was taken: the lease must not outlive this turn.
        # (The database thread may take the lease after this task stops waiting; its queue runs in order.)
        await asyncio.shield(_lease_release(turn.conversation.pk, token))
        raise


def _refuse(turn: Turn, sentence: str) -> None:
    with transaction.atomic():
        Message.objects.filter(pk=turn.user_message.pk).update(status=MessageStatus.FAILED, error=sentence)
        Message.objects.filter(pk=turn.reply.pk).update(status=MessageStatus.FAILED, error=sentence)


def _check_and_build(turn: Turn, profile: Profile | None = None, current: bool = False) -> Context:
    fresh, profile = _check_turn(turn, profile=profile, current=current)
    toolbox = None
    if fresh.persona_id is None or fresh.has_tools:
        toolbox = toolbox_for(persona=persona_of(turn.conversation), model=turn.conversation.effective_model)
    try:
        context = context_build(turn, toolbox=toolbox, resumed=turn.resumed)
    except (MessageTooLong, DocumentsNotReady) as exc:
        raise ReplyRefused(str(exc)) from exc
    context.time_zone = person_time_zone(profile.time_zone)
    return context


def conversation_checks() -> dict[str, Exists]:
    """Annotations `_check_turn` needs on a conversation: whether its persona has tools, and documents in scope."""
    return {
        "has_tools": Exists(Tool.objects.filter(personas=OuterRef("persona_id"), enabled=True)),
        "has_documents": documents_context.in_scope(),
    }


def _check_turn(turn: Turn, profile: Profile | None = None, current: bool = False) -> tuple[Conversation, Profile]:
    """ReplyRefused when the turn may not be answered: a message too long, a blocked person, a spent budget.

    Returns the conversation as stored now (annotated `has_tools`) and the person's profile. With `current`,
    a conversation read with `conversation_checks()` in the same trip, and the `profile` read there, are not
    read again.
    """
    if current and hasattr(turn.conversation, "has_tools"):
        fresh = turn.conversation
    else:
        # A background job may have titled or summarised the conversation since the turn was read.
        [fresh] = hot_path.instances("conversation_checked", _conversation_checked, pk=turn.conversation.pk)
        for field_name in ("title", "summary", "summary_until_id", "model", "persona", "has_documents"):
            setattr(turn.conversation, field_name, getattr(fresh, field_name))
    sender = turn.user_message.sender or turn.conversation.user
    if len(turn.user_message.content) > settings.MAX_MESSAGE_CHARS:
        raise ReplyRefused(
            _("Your message is %(length)d characters long; Jarvis accepts at most %(limit)d. Please shorten it.")
            % {"length": len(turn.user_message.content), "limit": settings.MAX_MESSAGE_CHARS}
        )
    # Read again, not taken from `sender`: a block or a new budget applies from the next answer on.
    profile = profile or profile_for(sender)
    if profile.is_blocked or not sender.is_active:
        raise ReplyRefused(_("Sorry, you are not allowed to use Jarvis. Please contact an admin."))
    refusal = budget_refusal(user=sender, profile=profile)
    if refusal:
        raise ReplyRefused(refusal)
    return fresh, profile


def _spend_refusal(user: AbstractBaseUser) -> str | None:
    """Why `user` may spend no more now (blocked, or over budget), or None."""
    profile = profile_for(user)
    if profile.is_blocked or not user.is_active:
        return _("Sorry, you are not allowed to use Jarvis. Please contact an admin.")
    return budget_refusal(user=user, profile=profile)


def _sender(turn: Turn) -> AbstractBaseUser:
    return turn.user_message.sender or turn.conversation.user


def _round_usage(context: Context, *, text: str, calls: Sequence[llm.ToolCall] = ()) -> llm.Usage:
    """A round's usage counted by Jarvis, for a provider that reported none."""
    output = llm.count_tokens(text, model=context.model)
    output += sum(llm.count_tokens(call.name + call.arguments, model=context.model) for call in calls)
    return llm.Usage(input_tokens=context.input_tokens, output_tokens=output, model=context.model)


def _charge(
    turn: Turn, *, context: Context, usage: llm.Usage, estimated: bool, round_number: int, status: str
) -> UsageRecord:
    return usage_record_create(
        user=_sender(turn),
        kind=UsageKind.CHAT,
        model=context.model,
        channel=turn.conversation.channel,
        conversation=turn.conversation,
        message=turn.reply,
        bot=turn.conversation.bot,
        input_tokens=usage.input_tokens,
        cached_input_tokens=usage.cached_input_tokens,
        output_tokens=usage.output_tokens,
        status=status,
        estimated=estimated,
        price=context.price,
        round=round_number,
    )


def _store_round(
    turn: Turn,
    *,
    context: Context,
    round_number: int,
    text: str,
    round_text: str,
    usage: llm.Usage | None,
    calls: Sequence[llm.ToolCall],
) -> tuple[list[ToolCall], UsageRecord]:
    """A round that asked for tools: its ledger row, its calls (as running) and the answer so far, in one write."""
    estimated = usage is None
    usage = usage or _round_usage(context, text=round_text, calls=calls)
    with transaction.atomic():
        rows = tool_calls_open(
            message_id=turn.reply.pk,
            conversation_id=turn.conversation.pk,
            user_id=_sender(turn).pk,
            round_number=round_number,
            calls=calls,
            toolbox=context.toolbox,
        )
        Message.objects.filter(pk=turn.reply.pk).update(content=storable_text(text))
        record = _charge(
            turn, context=context, usage=usage, estimated=estimated, round_number=round_number,
            status=UsageStatus.COMPLETE,
        )  # fmt: skip
    context.billed_input_tokens += usage.input_tokens
    context.billed_output_tokens += usage.output_tokens
    return rows, record


def _round_refusal(turn: Turn, rows: list[ToolCall]) -> str | None:
    """With the round paid for: why the person may not spend on its tools (stored on the calls), or None."""
    refusal = _spend_refusal(_sender(turn))
    if refusal:
        tool_calls_refuse(rows, reason=refusal)
    return refusal


def _close_round(rows: list[ToolCall], outcomes: list[Outcome], *, context: Context) -> None:
    """Store what each call of a round gave; the answer's context grows by what they take."""
    context.tool_tokens += tool_calls_close(rows, outcomes, model=context.model)


def _reply_save(reply: Message, **fields: object) -> None:
    """Write the finished answer over its pending row, stamped now; the caller holds the transaction."""
    fields["created_at"] = timezone.now()
    for name, value in fields.items():
        setattr(reply, name, value)
    reply.error = stored_text_redact(reply.error)  # what Message.save() does, which hot_path.update does not call
    hot_path.update(reply, list(fields))


def _store_answer(
    turn: Turn,
    *,
    context: Context,
    text: str,
    usage: llm.Usage | None,
    status: str,
    latency_ms: int,
    error: str = "",
    lease_token: str = "",
    round_number: int = 1,
    round_text: str | None = None,
    charge: bool = True,
) -> UsageRecord | None:
    """Record the answer and its last round's ledger row together: nothing spent goes unrecorded, nothing twice.

    `charge=False`: the round was billed already (the answer stopped while its tools ran). The conversation's
    lease (`lease_token`) is let go in the same write: storing is the answer's last step.
    """
    model = context.model
    estimated = usage is None
    if estimated:
        usage = _round_usage(context, text=text if round_text is None else round_text)
    billed_now = usage if charge else llm.Usage(input_tokens=0, output_tokens=0, model=model)
    reply = turn.reply
    text = storable_text(text)
    charged = charge and not (estimated and not text and status == MessageStatus.FAILED)
    with transaction.atomic():
        _reply_save(
            reply,
            content=text,
            status=status,
            error=error,
            model=model,
            input_tokens=context.billed_input_tokens + billed_now.input_tokens,
            output_tokens=context.billed_output_tokens + billed_now.output_tokens,
            token_count=llm.count_tokens(text, model=model),
            tool_tokens=context.tool_tokens,
            latency_ms=latency_ms,
        )
        # The question and its answer become searchable together: one statement, in this transaction.
        search.messages_index(turn.user_message, reply)
        if context.toolbox is not None or context.tool_tokens:
            tool_calls_interrupt(message_id=reply.pk, reason=error or _("Stopped."))
        if status == MessageStatus.FAILED and not text:
            Message.objects.filter(pk=turn.user_message.pk).update(status=MessageStatus.FAILED, error=error)
        hot_path.conversation_answered(conversation_id=turn.conversation.pk, at=reply.created_at, token=lease_token)
        if status == MessageStatus.COMPLETE and (not turn.conversation.title or context.history_trimmed):
            # A worker titles new conversations and summarises long ones (botapp.tasks), once this is committed.
            pk = turn.conversation.pk
            options = {"task_name": f"followups of conversation {pk}", "save": False}
            transaction.on_commit(
                partial(async_task, "botapp.tasks.conversation_followups", pk, q_options=options), robust=True
            )
        if not charged:
            return None
        return _charge(
            turn, context=context, usage=usage, estimated=estimated, round_number=round_number,
            status=UsageStatus.COMPLETE if status == MessageStatus.COMPLETE else UsageStatus.INCOMPLETE,
        )  # fmt: skip


class _Answering:
    """One answer being written: its rounds of model calls and tool calls, stored exactly once at the end."""

    def __init__(
        self,
        turn: Turn,
        context: Context,
        *,
        lease_token: str,
        on_delta: DeltaCallback | None,
        on_tool: ToolCallback | None,
    ) -> None:
        self.turn = turn
        self.context = context
        self.lease_token = lease_token
        self.on_delta = on_delta
        self.on_tool = on_tool
        self.text = context.text_so_far
        self.round = context.rounds_done + 1
        self.tool_rounds = context.rounds_done
        self.specs = context.toolbox.specs() if context.toolbox is not None else None
        self.records: list[UsageRecord] = []
        self.tool_calls: list[ToolCall] = []
        self.started = time.monotonic()
        self.stored = False

    async def run(self) -> Reply:
        while True:
            may_call = self.specs is not None and self.tool_rounds < limits.max_rounds()
            # Past the last tool round the model still sees the tools (the history names them) but may not call.
            choice = None if may_call or self.specs is None else "none"
            round_text, calls, usage = await self._model_call(tool_choice=choice)
            if calls and may_call and self.specs is not None:
                await self._tool_round(round_text, calls, usage)
                continue
            if calls and not self.text.strip():
                self.text = _(
                    "Jarvis used the %(rounds)d tool rounds it may take without reaching an answer. Please ask again, "
                    "perhaps more precisely."
                ) % {"rounds": self.tool_rounds}
            record = await self._store(
                text=self.text, usage=usage, round_text=round_text, status=MessageStatus.COMPLETE
            )
            return Reply(
                message=self.turn.reply,
                usage=record,
                text=self.text,
                records=self.records,
                tool_calls=self.tool_calls,
                documents=self.context.documents,
            )

    async def _model_call(self, *, tool_choice: str | None) -> tuple[str, tuple[llm.ToolCall, ...], llm.Usage | None]:
        """Stream one model call; the person sees its words join the answer so far."""
        prefix = self.text
        separator = "\n\n" if prefix and not prefix.endswith("\n\n") else ""
        parts: list[str] = []
        usage: llm.Usage | None = None
        calls: tuple[llm.ToolCall, ...] = ()
        context = self.context
        stream = llm.chat_stream(
            messages=context.messages,
            model=context.model,
            temperature=context.temperature,
            max_tokens=context.max_output_tokens,
            tools=self.specs,
            tool_choice=tool_choice,
        )
        try:
            async with aclosing(stream):
                async for item in stream:
                    if isinstance(item, llm.Usage):
                        usage = item
                    elif isinstance(item, llm.ToolCalls):
                        calls = item.calls
                    else:
                        delta = separator + item if not parts else item
                        parts.append(delta)
                        self.text = prefix + "".join(parts)
                        if self.on_delta is not None:
                            await self.on_delta(delta, self.text)
        except llm.LLMToolsUnsupported as exc:
            if parts or self.round != 1 or self.context.rounds_done:
                return await self._failed(exc, usage=usage, round_text="".join(parts))
            await self._without_tools(str(exc))
            return await self._model_call(tool_choice=None)
        except asyncio.CancelledError:
            logger.info(
                "Answer in conversation %s stopped after %d characters", self.turn.conversation.pk, len(self.text)
            )
            await self._store(
                text=self.text, usage=usage, round_text="".join(parts), status=MessageStatus.INCOMPLETE,
                error=_("Stopped."),
            )  # fmt: skip
            raise
        except llm.LLMError as exc:
            return await self._failed(exc, usage=usage, round_text="".join(parts))
        except Exception:
            # Showing the answer failed (the chat, a callback): what the model wrote and cost is still kept.
            logger.exception("Answer in conversation %s broke off", self.turn.conversation.pk)
            await self._store(
                text=self.text, usage=usage, round_text="".join(parts),
                status=MessageStatus.INCOMPLETE if self.text else MessageStatus.FAILED,
                error=_("The answer could not be delivered."),
            )  # fmt: skip
            raise
        return "".join(parts), calls, usage

    async def _failed(self, exc: llm.LLMError, *, usage: llm.Usage | None, round_text: str) -> Any:
        logger.warning("Model call failed in conversation %s: %s", self.turn.conversation.pk, exc.__class__.__name__)
        status = MessageStatus.INCOMPLETE if self.text else MessageStatus.FAILED
        await self._store(text=self.text, usage=usage, round_text=round_text, status=status, error=str(exc))
        raise ReplyFailed(str(exc), partial=self.text) from exc

    async def _without_tools(self, reason: str) -> None:
        """The model refused tools: remember it, and ask again without them (and without tool history)."""
        model = self.context.model
        logger.info("Model %s refuses tools (%s): asking without them from now on", model, reason[:200])
        await sync_to_async(model_tools_unsupported_note)(model=model, error=reason)
        fresh = await sync_to_async(context_build)(self.turn)
        fresh.time_zone = self.context.time_zone
        self.context = fresh
        self.specs = None

    async def _tool_round(self, round_text: str, calls: tuple[llm.ToolCall, ...], usage: llm.Usage | None) -> None:
        """Store the round, run its calls side by side, store their outcomes, and give them to the model."""
        context = self.context
        # Retried while the database is away: the round is paid for.
        rows, record = await asyncio.shield(
            database_retry(
                _store_round, self.turn, context=context, round_number=self.round, text=self.text,
                round_text=round_text, usage=usage, calls=calls,
            )
        )  # fmt: skip
        refusal = await database_retry(_round_refusal, self.turn, rows)
        self.records.append(record)
        self.tool_calls += rows
        if refusal:
            status = MessageStatus.INCOMPLETE if self.text.strip() else MessageStatus.FAILED
            await self._store(text=self.text, usage=None, round_text="", status=status, error=refusal, charge=False)
            raise ReplyFailed(refusal, partial=self.text)
        sender = _sender(self.turn)
        tool_context = ToolContext(
            user_id=sender.pk,
            conversation_id=self.turn.conversation.pk,
            message_id=self.turn.reply.pk,
            channel=self.turn.conversation.channel,
            bot_id=self.turn.conversation.bot_id,
            time_zone=context.time_zone,
            allow_private_urls=settings.TOOLS_ALLOW_PRIVATE_URLS,
            round_number=self.round,
        )
        assert context.toolbox is not None
        try:
            outcomes = await calls_run(
                calls, record_ids=[row.pk for row in rows], round_number=self.round, toolbox=context.toolbox,
                context=tool_context, on_event=self.on_tool,
            )  # fmt: skip
        except asyncio.CancelledError:
            await self._store(
                text=self.text, usage=None, round_text="", status=MessageStatus.INCOMPLETE, error=_("Stopped."),
                charge=False,
            )  # fmt: skip
            raise
        await asyncio.shield(database_retry(_close_round, rows, outcomes, context=context))
        context.messages.append(llm.assistant_tool_calls_message(calls, text=round_text))
        context.messages += [
            llm.tool_result_message(call_id=call.id, content=outcome.content)
            for call, outcome in zip(calls, outcomes, strict=True)
        ]
        context.input_tokens = tool_results_fit(context.messages, budget=context.budget, model=context.model)
        self.round += 1
        self.tool_rounds += 1

    async def _store(
        self,
        *,
        text: str,
        usage: llm.Usage | None,
        round_text: str,
        status: str,
        error: str = "",
        charge: bool = True,
    ) -> UsageRecord | None:
        latency_ms = int((time.monotonic() - self.started) * 1000)
        # Shielded: a second cancellation must not lose what was already spent. Retried while the database is
        # away: the person may have seen the answer, so it is stored and billed once the database is back.
        record = await asyncio.shield(
            database_retry(
                _store_answer,
                self.turn, context=self.context, text=text, usage=usage, status=status, latency_ms=latency_ms,
                error=error, lease_token=self.lease_token, round_number=self.round, round_text=round_text,
                charge=charge,
            )
        )  # fmt: skip
        self.stored = True
        if record is not None:
            self.records.append(record)
        return record


async def turn_answer(
    turn: Turn,
    *,
    on_delta: DeltaCallback | None = None,
    on_tool: ToolCallback | None = None,
    begun: Begun | None = None,
) -> Reply:
    """Answer a stored turn: check, build the context, stream, run the tools it asks for, store and price.

    `on_delta(delta, text_so_far)` sees the answer grow; `on_tool(event)` sees each tool call start and end.
    Raises ReplyError. Answers in one conversation never interleave: a lock in this process, and a lease in
    the database (renewed while the answer is written) across processes. `begun` (see `turn_begin`): the
    lease and context were taken in the trip that stored the turn.
    """
    conversation_id = turn.conversation.pk
    if begun is not None and begun.refusal is not None:
        raise begun.refusal
    lock = _lock_for(conversation_id)
    if begun is not None and lock.locked():
        # Another answer in this process comes first; this one waits for the lease like any other.
        await asyncio.shield(_lease_release(conversation_id, begun.token))
        begun = None
    async with lock:
        token = begun.token if begun is not None else secrets.token_hex(8)
        context = begun.context if begun is not None else await _begin_when_free(turn, token)
        keeper = asyncio.create_task(_lease_keep(conversation_id, token))
        answering = _Answering(turn, context, lease_token=token, on_delta=on_delta, on_tool=on_tool)
        try:
            return await answering.run()
        finally:
            keeper.cancel()
            if not answering.stored:
                await asyncio.shield(_lease_release(conversation_id, token))


async def conversation_reply(
    *,
    conversation: Conversation,
    text: str,
    sender: AbstractBaseUser | None = None,
    attachments: Sequence[dict[str, Any]] = (),
    telegram_message_id: int | None = None,
    on_delta: DeltaCallback | None = None,
    on_tool: ToolCallback | None = None,
) -> Reply:
    """Store what the person said, then answer it. `on_delta(delta, text_so_far)` sees the answer grow."""
    turn = await sync_to_async(turn_accept)(
        conversation=conversation,
        text=text,
        sender=sender,
        attachments=attachments,
        telegram_message_id=telegram_message_id,
    )
    return await turn_answer(turn, on_delta=on_delta, on_tool=on_tool)


@dataclass
class StreamEnd:
    """The last item of `turn_answer_stream`: the stored answer, or the error sentence."""

    reply: Reply | None = None
    error: ReplyError | None = None


async def turn_answer_stream(turn: Turn) -> AsyncIterator[str | ToolEvent | StreamEnd]:
    """`turn_answer` as an async iterator of deltas and tool events ending with a `StreamEnd`.

    Closing it early stops the answer.
    """
    queue: asyncio.Queue[str | ToolEvent | StreamEnd] = asyncio.Queue()

    async def on_delta(delta: str, _text: str) -> None:
        await queue.put(delta)

    async def run() -> None:
        try:
            reply = await turn_answer(turn, on_delta=on_delta, on_tool=queue.put)
        except ReplyError as exc:
            await queue.put(StreamEnd(error=exc))
        else:
            await queue.put(StreamEnd(reply=reply))

    task = asyncio.create_task(run())
    try:
        while True:
            item = await queue.get()
            yield item
            if isinstance(item, StreamEnd):
                break
    finally:
        if not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass


# --- Conversations ------------------------------------------------------------------------------


def conversation_start(
    *,
    user: AbstractBaseUser,
    channel: str,
    bot: Bot | None = None,
    telegram_chat_id: int | None = None,
    persona: Persona | None = None,
    title: str = "",
    voice_answers: bool | None = None,
    replace_active: bool = True,
    lease_token: str = "",
) -> Conversation:
    """Start a conversation; in a Telegram chat it replaces the active one (the old one is kept).

    `replace_active=False`: the caller just saw that the chat has none. With `lease_token` it starts with its
    lease held (for the turn about to be stored in it).
    """
    if persona is None:
        persona = persona_default(bot=bot)
    conversation = Conversation(
        user=user,
        channel=channel,
        bot=bot,
        telegram_chat_id=telegram_chat_id,
        persona=persona,
        title=title,
        voice_answers=voice_answers,
    )
    if lease_token:
        conversation.answering_until, conversation.answering_token = timezone.now() + LEASE, lease_token
    if telegram_chat_id is None or not replace_active:
        # Inside a caller's transaction a savepoint keeps a conflict (a chat started meanwhile) recoverable.
        with transaction.atomic() if transaction.get_connection().in_atomic_block else nullcontext():
            hot_path.insert(conversation)
        return conversation
    with transaction.atomic():
        Conversation.objects.filter(bot=bot, telegram_chat_id=telegram_chat_id, is_active=True).update(is_active=False)
        hot_path.insert(conversation)
    return conversation


def chat_conversation(
    *, bot: Bot, telegram_chat_id: int, user: AbstractBaseUser, checks: bool = False, lease_token: str = ""
) -> tuple[Conversation, bool]:
    """The active conversation of a Telegram chat, started on first contact; and whether this call started it.

    The bot and the person are the ones the caller has in hand, so they are not read again. `checks`: read
    with `conversation_checks()`; `lease_token`: a conversation started here starts with its lease held.
    """
    active = Conversation.objects.select_related("persona").filter(
        bot=bot, telegram_chat_id=telegram_chat_id, is_active=True
    )
    if checks:
        found = hot_path.instances(
            "chat_conversation_checked", _chat_conversation_checked, bot_id=bot.pk, telegram_chat_id=telegram_chat_id
        )
        conversation = found[0] if found else None
    else:
        conversation = active.first()
    started = conversation is None
    if conversation is None:
        try:
            conversation = conversation_start(
                user=user, channel=Channel.TELEGRAM, bot=bot, telegram_chat_id=telegram_chat_id,
                replace_active=False, lease_token=lease_token,
            )  # fmt: skip
        except IntegrityError:
            # Two first messages in a new chat at once: the other one started it.
            conversation, started = active.get(), False
    conversation.bot = bot
    if conversation.user_id == user.pk:
        conversation.user = user
    return conversation, started


def _chat_conversation_checked(*, bot_id: int, telegram_chat_id: int) -> QuerySet[Conversation]:
    active = Conversation.objects.select_related("persona").filter(
        bot_id=bot_id, telegram_chat_id=telegram_chat_id, is_active=True
    )
    return active.annotate(**conversation_checks()).order_by("pk")[:1]


def _conversation_checked(*, pk: int) -> QuerySet[Conversation]:
    return Conversation.objects.select_related("persona").annotate(**conversation_checks()).filter(pk=pk)


def conversation_for_chat(*, bot: Bot, telegram_chat_id: int, user: AbstractBaseUser) -> Conversation:
    """The active conversation of a Telegram chat, started on first contact.

    The bot and the person are the ones the caller has in hand, so they are not read again.
    """
    return chat_conversation(bot=bot, telegram_chat_id=telegram_chat_id, user=user)[0]


# --- Voice --------------------------------------------------------------------------------------

# The provider's upload limit for transcription.
MAX_AUDIO_BYTES = 25 * 1024 * 1024


async def audio_transcribe(
    *,
    user: AbstractBaseUser,
    data: bytes,
    filename: str,
    channel: str,
    conversation: Conversation | None = None,
    bot: Bot | None = None,
    duration_hint: float | None = None,
) -> llm.Transcript:
    """Transcribe audio and record its cost; raises ReplyError with a sentence on failure."""
    if len(data) > MAX_AUDIO_BYTES:
        raise ReplyRefused(
            _("The recording is %(size).1f MB; the transcription service accepts at most 25 MB. Send a shorter one.")
            % {"size": len(data) / 1024 / 1024}
        )
    refusal = await sync_to_async(budget_refusal)(user=user)
    if refusal:
        raise ReplyRefused(refusal)
    try:
        transcript = await llm.transcribe(data=data, filename=filename)
    except llm.LLMError as exc:
        raise ReplyFailed(str(exc)) from exc
    seconds = transcript.audio_seconds
    if not seconds and duration_hint:
        seconds = Decimal(str(duration_hint))
    await sync_to_async(usage_record_create)(
        user=user,
        kind=UsageKind.TRANSCRIPTION,
        model=transcript.model,
        channel=channel,
        conversation=conversation,
        bot=bot,
        audio_seconds=seconds,
    )
    return llm.Transcript(text=transcript.text, audio_seconds=seconds, model=transcript.model)


# --- Pictures and speech (made and kept by botapp.media) -----------------------------------------


@dataclass
class Drawn:
    """A stored /image turn's answer: the message, its picture and the ledger row that paid for it."""

    message: Message
    media: MediaFile
    usage: UsageRecord


def _plan_picture(turn: Turn) -> media.PicturePlan:
    _check_turn(turn)
    return media.picture_plan(conversation=turn.conversation)


def _store_picture(turn: Turn, *, stored: media.StoredPicture, latency_ms: int, lease_token: str) -> Drawn:
    """The answer, its picture and its ledger row in one write, letting go of the lease (like `_store_answer`)."""
    reply = turn.reply
    picture = stored.picture
    content = picture.revised_prompt or stored.prompt
    sender = turn.user_message.sender or turn.conversation.user
    with transaction.atomic():
        _reply_save(
            reply,
            content=content,
            status=MessageStatus.COMPLETE,
            error="",
            model=picture.model,
            input_tokens=picture.usage.input_tokens if picture.usage else 0,
            output_tokens=picture.usage.output_tokens if picture.usage else 0,
            token_count=llm.count_tokens(content, model=turn.conversation.effective_model),
            latency_ms=latency_ms,
        )
        hot_path.conversation_answered(conversation_id=turn.conversation.pk, at=reply.created_at, token=lease_token)
        picture_file, record = media.picture_record(
            stored=stored,
            conversation=turn.conversation,
            requested_by=sender,
            message=reply,
            charge_message=reply,
        )
    return Drawn(message=reply, media=picture_file, usage=record)


def _picture_failed(turn: Turn, sentence: str, token: str) -> None:
    with transaction.atomic():
        _refuse(turn, sentence)
        _lease_release_now(turn.conversation.pk, token)


async def turn_draw(turn: Turn, *, prompt: str, source: media.ImageSource | None = None) -> Drawn:
    """Answer a stored /image turn with a picture (an edit of `source` when given). Raises ReplyError.

    The same rules as a chat answer: the conversation's lease, the person's access and budget checked
    before the provider is called, and the answer stored with its ledger row (kind `image`) in one write.
    The provider's refusals (safety, an unsupported size, a timeout) are stored on the turn as sentences.
    """
    conversation_id = turn.conversation.pk
    async with _lock_for(conversation_id):
        token = secrets.token_hex(8)
        plan = await _begin_when_free(turn, token, _plan_picture)
        keeper = asyncio.create_task(_lease_keep(conversation_id, token))
        stored = None
        try:
            started = time.monotonic()
            try:
                stored = await media.picture_make(plan=plan, prompt=prompt, source=source)
            except media.MediaError as exc:
                logger.info("No picture in conversation %s: %s", conversation_id, exc)
                await asyncio.shield(sync_to_async(_picture_failed)(turn, str(exc), token))
                raise (ReplyRefused if isinstance(exc, media.MediaRefused) else ReplyFailed)(str(exc)) from exc
            latency_ms = int((time.monotonic() - started) * 1000)
            # Shielded and retried while the database is away: the picture is paid for and must not be lost.
            return await asyncio.shield(
                database_retry(_store_picture, turn, stored=stored, latency_ms=latency_ms, lease_token=token)
            )
        except BaseException:
            if stored is not None and not await sync_to_async(_picture_kept)(stored.name):
                await asyncio.shield(sync_to_async(media.discard)(stored.name))
            raise
        finally:
            keeper.cancel()
            await asyncio.shield(_lease_release(conversation_id, token))


def _picture_kept(name: str) -> bool:
    return MediaFile.objects.filter(file=name).exists()


async def reply_speak(*, message: Message, requested_by: AbstractBaseUser) -> media.Spoken:
    """Read an answer out (kept, and charged once as `speech`); raises ReplyError with a sentence."""
    try:
        return await media.message_speak(message=message, requested_by=requested_by)
    except media.MediaRefused as exc:
        raise ReplyRefused(str(exc)) from exc
    except media.MediaError as exc:
        raise ReplyFailed(str(exc)) from exc
