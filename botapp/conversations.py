"""The funnel: one user message in, one persisted and priced assistant answer out, for every channel."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from datetime import timedelta
from decimal import Decimal
from functools import partial
from typing import Any, NamedTuple

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import Case, F, Q, Value, When
from django.utils import timezone
from django.utils.translation import gettext as _
from django_q.tasks import async_task

from botapp import llm, media
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
    ModelPrice,
    Persona,
    Role,
    UsageKind,
    UsageRecord,
    UsageStatus,
)
from botapp.storable import storable_text
from botapp.usage import budget_refusal, price_in_force, profile_for, usage_record_create

logger = logging.getLogger(__name__)

DEFAULT_SYSTEM_PROMPT = "You are Jarvis, a helpful, concise assistant."
# How many recent messages are read to fill the window; more than this never fits a sane budget.
CONTEXT_SCAN_LIMIT = 400
IN_CONTEXT = (MessageStatus.COMPLETE, MessageStatus.INCOMPLETE)

DeltaCallback = Callable[[str, str], Awaitable[None]]


class ReplyError(Exception):
    """No (complete) answer; `str(error)` is the sentence to show the person."""


class ReplyRefused(ReplyError):
    """Refused before calling the model: bad input, a blocked person, a spent budget, a message too long."""


class ReplyFailed(ReplyError):
    """The model call failed or broke off; what was stored says what happened."""

    def __init__(self, message: str, *, partial: str = "") -> None:
        super().__init__(message)
        self.partial = partial


@dataclass
class Turn:
    """A stored user message and the pending answer that reserves its place in the conversation."""

    conversation: Conversation
    user_message: Message
    reply: Message


@dataclass
class Reply:
    message: Message
    usage: UsageRecord | None
    text: str
    # Documents the answer was built on, to cite under it.
    sources: list[documents_context.Source] = dataclass_field(default_factory=list)


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
) -> Turn:
    """Store the user's message and a pending answer in one transaction, before anything can fail."""
    text = validate_text(text, has_attachments=bool(attachments))
    model = conversation.effective_model
    now = timezone.now()
    user_message = Message(
        conversation=conversation,
        role=Role.USER,
        sender=sender or conversation.user,
        content=text,
        attachments=list(attachments),
        token_count=_tokens_of_question(text, model=model) + llm.TOKENS_PER_IMAGE * len(_images(attachments)),
        telegram_message_id=telegram_message_id,
        created_at=now,
    )
    reply = Message(
        conversation=conversation, role=Role.ASSISTANT, status=MessageStatus.PENDING, model=model, created_at=now
    )
    with transaction.atomic():
        # One INSERT for both, question first: the answer's id follows its question's.
        Message.objects.bulk_create([user_message, reply])
        Conversation.objects.filter(pk=conversation.pk).update(updated_at=now)
    return Turn(conversation=conversation, user_message=user_message, reply=reply)


def _images(attachments: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [attachment for attachment in attachments if attachment.get("url")]


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


def turn_for_pending_reply(reply: Message) -> Turn:
    """Rebuild the turn of an answer left pending (for example by a crash), to answer it now."""
    conversation = Conversation.objects.select_related("persona", "bot", "user").get(pk=reply.conversation_id)
    user_message = conversation.messages.filter(role=Role.USER, id__lt=reply.id).order_by("-id").first()
    if user_message is None:
        raise ReplyRefused(_("There is nothing to answer."))
    return Turn(conversation=conversation, user_message=user_message, reply=reply)


# --- Building the context -----------------------------------------------------------------------


def _persona(conversation: Conversation) -> Persona | None:
    if conversation.persona_id is None:
        return Persona.objects.filter(name="Jarvis").first()
    return conversation.persona


_LOOK_UP = object()


def context_budget(*, model: str, max_output_tokens: int, price: ModelPrice | object | None = _LOOK_UP) -> int:
    """Tokens the request may take: the model's window less room for the answer, capped by the setting."""
    if price is _LOOK_UP:
        price = price_in_force(model=model)
    budget = settings.CONTEXT_TOKEN_BUDGET
    if price is not None and price.context_window:
        budget = min(budget, price.context_window - max_output_tokens)
    return max(budget, 0)


class _Row(NamedTuple):
    """A message as the context reads it: plain values, not a model instance (hundreds are read per answer)."""

    id: int
    role: str
    content: str
    attachments: list[dict[str, Any]]
    token_count: int


def _as_chat_message(message: _Row, *, with_images: bool) -> dict[str, Any]:
    if not message.attachments:
        return {"role": message.role, "content": message.content}
    images = _images(message.attachments)
    content = message.content
    files = [attachment["name"] for attachment in message.attachments if attachment.get("type") == "document"]
    if files:
        # The files themselves reach the model through the documents' context message.
        note = _("[sent the document(s): %(names)s]") % {"names": ", ".join(files)}
        content = f"{content}\n{note}".strip()
    if not images:
        return {"role": message.role, "content": content}
    if not with_images:
        note = _("[%(count)d image(s) sent earlier]") % {"count": len(images)}
        return {"role": message.role, "content": f"{content}\n{note}".strip()}
    parts: list[dict[str, Any]] = [{"type": "text", "text": content}] if content else []
    for attachment in images:
        parts.append({"type": "image_url", "image_url": {"url": attachment["url"], "detail": "low"}})
    return {"role": message.role, "content": parts}


@dataclass
class Context:
    messages: list[dict[str, Any]]
    model: str
    temperature: float | None
    max_output_tokens: int
    input_tokens: int
    # The price in force when the call was made: what it is charged at.
    price: ModelPrice | None
    # Older history was left out: time for the summary job.
    history_trimmed: bool
    # The documents (or parts) sent with the question, to cite under the answer.
    sources: list[documents_context.Source] = dataclass_field(default_factory=list)


def context_build(turn: Turn) -> Context:
    """System prompt, summary, then as many of the latest messages as fit, oldest first.

    The newest messages win; the system prompt is never cut; a question that alone does not fit is refused.
    """
    conversation = turn.conversation
    persona = _persona(conversation)
    model = conversation.effective_model
    max_output = persona.max_output_tokens if persona else 1024
    head = [{"role": "system", "content": persona.system_prompt if persona else DEFAULT_SYSTEM_PROMPT}]
    if conversation.summary:
        head.append(
            {"role": "system", "content": _("Summary of the earlier conversation:") + "\n" + conversation.summary}
        )
    price = price_in_force(model=model)
    budget = context_budget(model=model, max_output_tokens=max_output, price=price)
    used = llm.count_message_tokens(head, model=model)
    # Documents get their share of what the question leaves; the history fills the rest.
    spare = budget - used - turn.user_message.token_count - llm.TOKENS_PER_MESSAGE
    documents = documents_context.context_for_question(
        conversation=conversation,
        persona=persona,
        question=turn.user_message,
        reply=turn.reply,
        model=model,
        budget=int(max(spare, 0) * documents_context.DOCUMENT_SHARE),
    )
    if documents is not None:
        if documents.refusal:
            raise ReplyRefused(documents.refusal)
        head += documents.messages
        used += documents.tokens
    rows = (
        Message.objects.filter(
            conversation_id=conversation.pk,
            id__lt=turn.reply.id,
            id__gt=conversation.summary_until_id or 0,
            role__in=(Role.USER, Role.ASSISTANT),
            status__in=IN_CONTEXT,
        )
        .order_by("-id")
        .values_list("id", "role", "content", "attachments", "token_count")[:CONTEXT_SCAN_LIMIT]
    )
    picked: list[_Row] = []
    history_trimmed = False
    for row in map(_Row._make, rows):
        cost = row.token_count + llm.TOKENS_PER_MESSAGE
        if used + cost > budget:
            history_trimmed = True
            break
        picked.append(row)
        used += cost
    else:
        # All that was read fitted; a scan that stopped at its limit still left older messages out.
        history_trimmed = len(picked) >= CONTEXT_SCAN_LIMIT
    if not picked or picked[0].id != turn.user_message.id:
        limit = max(budget - llm.count_message_tokens(head, model=model), 0)
        raise ReplyRefused(
            _(
                "Your message is too long for the model: it is about %(tokens)d tokens and at most %(limit)d fit. "
                "Please shorten it or send it in parts."
            )
            % {"tokens": turn.user_message.token_count, "limit": limit}
        )
    history = [_as_chat_message(m, with_images=m.id == turn.user_message.id) for m in reversed(picked)]
    return Context(
        messages=head + history,
        model=model,
        temperature=float(persona.temperature) if persona else None,
        max_output_tokens=max_output,
        input_tokens=used,
        price=price,
        history_trimmed=history_trimmed,
        sources=documents.sources if documents is not None else [],
    )


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


def _begin(turn: Turn, token: str, prepare: Callable[[Turn], Any] | None = None) -> Any:
    """Take the conversation's lease, check the turn and build its context, in one trip to the database.

    None while another process holds the lease; a refused turn is stored as failed and the lease let go.
    `prepare` checks and builds (the chat context by default; a picture's plan for /image turns).
    """
    now = timezone.now()
    taken = Conversation.objects.filter(
        Q(answering_until__isnull=True) | Q(answering_until__lt=now), pk=turn.conversation.pk
    ).update(answering_until=now + LEASE, answering_token=token)
    if not taken:
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


def _lease_release_now(conversation_id: int, token: str) -> None:
    Conversation.objects.filter(pk=conversation_id, answering_token=token).update(
        answering_until=None, answering_token=""
    )


async def _lease_release(conversation_id: int, token: str) -> None:
    # Tried until the lease would have run out anyway.
    await database_retry(_lease_release_now, conversation_id, token, deadline=LEASE.total_seconds())


def _refuse(turn: Turn, sentence: str) -> None:
    with transaction.atomic():
        Message.objects.filter(pk=turn.user_message.pk).update(status=MessageStatus.FAILED, error=sentence)
        Message.objects.filter(pk=turn.reply.pk).update(status=MessageStatus.FAILED, error=sentence)


def _check_and_build(turn: Turn) -> Context:
    _check_turn(turn)
    return context_build(turn)


def _check_turn(turn: Turn) -> None:
    """ReplyRefused when the turn may not be answered: a message too long, a blocked person, a spent budget."""
    # A background job may have titled or summarised the conversation since the turn was read.
    fresh = (
        Conversation.objects.select_related("persona")
        .annotate(has_documents=documents_context.in_scope())
        .get(pk=turn.conversation.pk)
    )
    for field in ("title", "summary", "summary_until_id", "model", "persona", "has_documents"):
        setattr(turn.conversation, field, getattr(fresh, field))
    sender = turn.user_message.sender or turn.conversation.user
    if len(turn.user_message.content) > settings.MAX_MESSAGE_CHARS:
        raise ReplyRefused(
            _("Your message is %(length)d characters long; Jarvis accepts at most %(limit)d. Please shorten it.")
            % {"length": len(turn.user_message.content), "limit": settings.MAX_MESSAGE_CHARS}
        )
    # Read again, not taken from `sender`: a block or a new budget applies from the next answer on.
    profile = profile_for(sender)
    if profile.is_blocked or not sender.is_active:
        raise ReplyRefused(_("Sorry, you are not allowed to use Jarvis. Please contact an admin."))
    refusal = budget_refusal(user=sender, profile=profile)
    if refusal:
        raise ReplyRefused(refusal)


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
) -> UsageRecord | None:
    """Record the answer and its ledger row together: nothing spent goes unrecorded, nothing twice.

    The conversation's lease (`lease_token`) is let go in the same write: storing is the answer's last step.
    """
    model = context.model
    estimated = usage is None
    if estimated:
        usage = llm.Usage(
            input_tokens=context.input_tokens, output_tokens=llm.count_tokens(text, model=model), model=model
        )
    reply = turn.reply
    text = storable_text(text)
    reply.content = text
    reply.status = status
    reply.error = error
    reply.model = model
    reply.input_tokens = usage.input_tokens
    reply.output_tokens = usage.output_tokens
    reply.token_count = llm.count_tokens(text, model=model)
    reply.latency_ms = latency_ms
    reply.created_at = timezone.now()
    sender = turn.user_message.sender or turn.conversation.user
    charged = not (estimated and not text and status == MessageStatus.FAILED)
    with transaction.atomic():
        reply.save(
            update_fields=[
                "content",
                "status",
                "error",
                "model",
                "input_tokens",
                "output_tokens",
                "token_count",
                "latency_ms",
                "created_at",
            ]
        )
        if status == MessageStatus.FAILED and not text:
            Message.objects.filter(pk=turn.user_message.pk).update(status=MessageStatus.FAILED, error=error)
        released = {}
        if lease_token:
            held = Q(answering_token=lease_token)
            released = {
                "answering_until": Case(When(held, then=None), default=F("answering_until")),
                "answering_token": Case(When(held, then=Value("")), default=F("answering_token")),
            }
        Conversation.objects.filter(pk=turn.conversation.pk).update(updated_at=reply.created_at, **released)
        if status == MessageStatus.COMPLETE and (not turn.conversation.title or context.history_trimmed):
            # A worker titles new conversations and summarises long ones (botapp.tasks), once this is committed.
            pk = turn.conversation.pk
            options = {"task_name": f"followups of conversation {pk}", "save": False}
            transaction.on_commit(
                partial(async_task, "botapp.tasks.conversation_followups", pk, q_options=options), robust=True
            )
        if not charged:
            return None
        return usage_record_create(
            user=sender,
            kind=UsageKind.CHAT,
            model=model,
            channel=turn.conversation.channel,
            conversation=turn.conversation,
            message=reply,
            bot=turn.conversation.bot,
            input_tokens=usage.input_tokens,
            cached_input_tokens=usage.cached_input_tokens,
            output_tokens=usage.output_tokens,
            status=UsageStatus.COMPLETE if status == MessageStatus.COMPLETE else UsageStatus.INCOMPLETE,
            estimated=estimated,
            price=context.price,
        )


async def turn_answer(turn: Turn, *, on_delta: DeltaCallback | None = None) -> Reply:
    """Answer a stored turn: check, build the context, stream, store and price. Raises ReplyError.

    Answers in one conversation never interleave: a lock in this process, and a lease in the database
    (renewed while the answer streams) across processes.
    """
    conversation_id = turn.conversation.pk
    async with _lock_for(conversation_id):
        token = secrets.token_hex(8)
        try:
            while True:
                context = await sync_to_async(_begin)(turn, token)
                if context is not None:
                    break
                await asyncio.sleep(LEASE_POLL_SECONDS)
        except ReplyRefused:
            raise
        except BaseException:
            # Cancelled, or the database failed after the lease was taken: the lease must not outlive this turn.
            # (The database thread may take the lease after this task stops waiting; its queue runs in order.)
            await asyncio.shield(_lease_release(conversation_id, token))
            raise
        keeper = asyncio.create_task(_lease_keep(conversation_id, token))
        stored = False
        try:
            parts: list[str] = []
            usage: llm.Usage | None = None
            started = time.monotonic()

            async def store(**kwargs: Any) -> UsageRecord | None:
                nonlocal stored
                latency_ms = int((time.monotonic() - started) * 1000)
                # Shielded: a second cancellation must not lose what was already spent. Retried while the
                # database is away: the person may have seen the answer, so it is stored and billed once it is back.
                record = await asyncio.shield(
                    database_retry(
                        _store_answer, turn, context=context, latency_ms=latency_ms, lease_token=token, **kwargs
                    )
                )
                stored = True
                return record

            stream = llm.chat_stream(
                messages=context.messages,
                model=context.model,
                temperature=context.temperature,
                max_tokens=context.max_output_tokens,
            )
            try:
                async with aclosing(stream):
                    async for item in stream:
                        if isinstance(item, llm.Usage):
                            usage = item
                            continue
                        parts.append(item)
                        if on_delta is not None:
                            await on_delta(item, "".join(parts))
            except asyncio.CancelledError:
                text = "".join(parts)
                logger.info("Answer in conversation %s stopped after %d characters", conversation_id, len(text))
                await store(text=text, usage=usage, status=MessageStatus.INCOMPLETE, error=_("Stopped."))
                raise
            except llm.LLMError as exc:
                text = "".join(parts)
                logger.warning("Model call failed in conversation %s: %s", conversation_id, exc.__class__.__name__)
                status = MessageStatus.INCOMPLETE if text else MessageStatus.FAILED
                await store(text=text, usage=usage, status=status, error=str(exc))
                raise ReplyFailed(str(exc), partial=text) from exc
            except Exception:
                # Showing the answer failed (the chat, a callback): what the model wrote and cost is still kept.
                text = "".join(parts)
                logger.exception("Answer in conversation %s broke off after %d characters", conversation_id, len(text))
                status = MessageStatus.INCOMPLETE if text else MessageStatus.FAILED
                await store(text=text, usage=usage, status=status, error=_("The answer could not be delivered."))
                raise
            text = "".join(parts)
            record = await store(text=text, usage=usage, status=MessageStatus.COMPLETE)
            return Reply(message=turn.reply, usage=record, text=text, sources=context.sources)
        finally:
            keeper.cancel()
            if not stored:
                await asyncio.shield(_lease_release(conversation_id, token))


async def conversation_reply(
    *,
    conversation: Conversation,
    text: str,
    sender: AbstractBaseUser | None = None,
    attachments: Sequence[dict[str, Any]] = (),
    telegram_message_id: int | None = None,
    on_delta: DeltaCallback | None = None,
) -> Reply:
    """Store what the person said, then answer it. `on_delta(delta, text_so_far)` sees the answer grow."""
    turn = await sync_to_async(turn_accept)(
        conversation=conversation,
        text=text,
        sender=sender,
        attachments=attachments,
        telegram_message_id=telegram_message_id,
    )
    return await turn_answer(turn, on_delta=on_delta)


@dataclass
class StreamEnd:
    """The last item of `turn_answer_stream`: the stored answer, or the error sentence."""

    reply: Reply | None = None
    error: ReplyError | None = None


async def turn_answer_stream(turn: Turn) -> AsyncIterator[str | StreamEnd]:
    """`turn_answer` as an async iterator of deltas ending with a `StreamEnd`; closing it early stops the answer."""
    queue: asyncio.Queue[str | StreamEnd] = asyncio.Queue()

    async def on_delta(delta: str, _text: str) -> None:
        await queue.put(delta)

    async def run() -> None:
        try:
            reply = await turn_answer(turn, on_delta=on_delta)
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
) -> Conversation:
    """Start a conversation; in a Telegram chat it replaces the active one (the old one is kept)."""
    if persona is None:
        persona = bot.default_persona if bot is not None and bot.default_persona_id else None
    if persona is None:
        persona = Persona.objects.filter(name="Jarvis").first()
    with transaction.atomic():
        if telegram_chat_id is not None:
            Conversation.objects.filter(bot=bot, telegram_chat_id=telegram_chat_id, is_active=True).update(
                is_active=False
            )
        return Conversation.objects.create(
            user=user,
            channel=channel,
            bot=bot,
            telegram_chat_id=telegram_chat_id,
            persona=persona,
            title=title,
            voice_answers=voice_answers,
        )


def conversation_for_chat(*, bot: Bot, telegram_chat_id: int, user: AbstractBaseUser) -> Conversation:
    """The active conversation of a Telegram chat, started on first contact.

    The bot and the person are the ones the caller has in hand, so they are not read again.
    """
    active = Conversation.objects.select_related("persona").filter(
        bot=bot, telegram_chat_id=telegram_chat_id, is_active=True
    )
    conversation = active.first()
    if conversation is None:
        try:
            conversation = conversation_start(
                user=user, channel=Channel.TELEGRAM, bot=bot, telegram_chat_id=telegram_chat_id
            )
        except IntegrityError:
            # Two first messages in a new chat at once: the other one started it.
            conversation = active.get()
    conversation.bot = bot
    if conversation.user_id == user.pk:
        conversation.user = user
    return conversation


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
    reply.content = picture.revised_prompt or stored.prompt
    reply.status = MessageStatus.COMPLETE
    reply.error = ""
    reply.model = picture.model
    reply.input_tokens = picture.usage.input_tokens if picture.usage else 0
    reply.output_tokens = picture.usage.output_tokens if picture.usage else 0
    reply.token_count = llm.count_tokens(reply.content, model=turn.conversation.effective_model)
    reply.latency_ms = latency_ms
    reply.created_at = timezone.now()
    sender = turn.user_message.sender or turn.conversation.user
    held = Q(answering_token=lease_token)
    with transaction.atomic():
        reply.save(
            update_fields=[
                "content",
                "status",
                "error",
                "model",
                "input_tokens",
                "output_tokens",
                "token_count",
                "latency_ms",
                "created_at",
            ]
        )
        Conversation.objects.filter(pk=turn.conversation.pk).update(
            updated_at=reply.created_at,
            answering_until=Case(When(held, then=None), default=F("answering_until")),
            answering_token=Case(When(held, then=Value("")), default=F("answering_token")),
        )
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
        try:
            while True:
                plan = await sync_to_async(_begin)(turn, token, _plan_picture)
                if plan is not None:
                    break
                await asyncio.sleep(LEASE_POLL_SECONDS)
        except ReplyRefused:
            raise
        except BaseException:
            await asyncio.shield(_lease_release(conversation_id, token))
            raise
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
