"""Background jobs run by the django-q2 workers (queued by dotted path, e.g. "botapp.tasks.conversation_title").

Each job is a plain synchronous function that takes ids, not objects, so it can run in any worker on any
machine. Every model call a job makes is a row in the usage ledger, charged to the conversation's owner.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal

import telegram
from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import transaction
from django.db.models import Count, F, Q, Sum
from django.utils import timezone
from telegram.error import TelegramError

from botapp import llm
from botapp.context import IN_CONTEXT, context_budget, context_head, persona_of
from botapp.documents.services import documents_expire
from botapp.models import (
    Bot,
    Conversation,
    MediaFile,
    Message,
    ProcessedUpdate,
    Role,
    UsageKind,
    UsageRecord,
)
from botapp.search import messages_forget
from botapp.usage import budget_refusal, format_usd, usage_record_create

logger = logging.getLogger(__name__)

SUMMARY_PROMPT = (
    "You keep the memory of a long conversation between a person and Jarvis, an AI assistant. "
    "Merge the summary so far and the next part of the conversation into one concise summary that lets "
    "Jarvis carry on: facts about the person and their wishes, decisions, open questions and what was being "
    "worked on. Write it in the language of the conversation, in at most 250 words, without a preamble."
)
TITLE_PROMPT = (
    "Give the conversation below a short title of at most six words, in the language of the conversation. "
    "Answer with the title only: no quotes, no full stop."
)
# Room the summary itself may take; also its share of the next requests' context.
SUMMARY_MAX_TOKENS = 512
# After summarising, the newest messages kept word for word take at most this share of the budget,
# so the next few turns fit without summarising again.
KEEP_SHARE = Decimal("0.5")
TITLE_MAX_TOKENS = 24
TITLE_MAX_CHARS = 80
# What the title job reads of the first question and answer.
TITLE_SOURCE_CHARS = 2000
RETENTION_PLACEHOLDER = "[removed by the retention policy]"
RETENTION_BATCH = 500


# --- After an answer ----------------------------------------------------------------------------


def conversation_followups(conversation_id: int) -> str:
    """Queued by the funnel after every complete answer: title a new conversation, summarise a long one."""
    done = []
    for job in (conversation_title, conversation_summarise):
        try:
            done.append(job(conversation_id))
        except llm.LLMError as exc:
            # The next answer queues the follow-ups again; nothing is lost by waiting.
            logger.warning("%s for conversation %s failed: %s", job.__name__, conversation_id, exc)
            done.append(f"{job.__name__} failed: {exc}")
    return " ".join(done)


def _job_may_spend(conversation: Conversation, job: str) -> bool:
    if not llm.is_configured():
        logger.info("No model provider configured: %s of conversation %s skipped", job, conversation.pk)
        return False
    if budget_refusal(user=conversation.user):
        logger.info("Owner of conversation %s is over budget: %s skipped", conversation.pk, job)
        return False
    return True


def _charge(conversation: Conversation, *, kind: str, usage: llm.Usage, model: str) -> UsageRecord:
    return usage_record_create(
        user=conversation.user,
        kind=kind,
        model=usage.model or model,
        channel=conversation.channel,
        conversation=conversation,
        bot=conversation.bot,
        input_tokens=usage.input_tokens,
        cached_input_tokens=usage.cached_input_tokens,
        output_tokens=usage.output_tokens,
    )


# --- Titles -------------------------------------------------------------------------------------


def _clean_title(text: str) -> str:
    line = next((part for part in text.splitlines() if part.strip()), "")
    line = re.sub(r"^(title\s*:\s*)", "", line.strip(), flags=re.IGNORECASE)
    line = line.strip().strip("\"'“”‘’«»*#`").strip().rstrip(".。").strip()
    if len(line) > TITLE_MAX_CHARS:
        line = line[: TITLE_MAX_CHARS - 1].rstrip() + "…"
    return line


def conversation_title(conversation_id: int) -> str:
    """Give an untitled conversation a short title from its first question and answer (a `title` ledger row)."""
    conversation = Conversation.objects.select_related("user", "bot").filter(pk=conversation_id).first()
    if conversation is None or conversation.title:
        return f"Conversation {conversation_id} needs no title."
    first = list(
        conversation.messages.filter(role__in=(Role.USER, Role.ASSISTANT), status__in=IN_CONTEXT)
        .exclude(content="")
        .order_by("id")
        .values_list("role", "content")[:2]
    )
    if not first or not _job_may_spend(conversation, "title"):
        return f"Conversation {conversation_id} was not titled."
    model = conversation.effective_model
    transcript = "\n\n".join(
        f"{'Person' if role == Role.USER else 'Jarvis'}: {content[:TITLE_SOURCE_CHARS]}" for role, content in first
    )
    text, usage = async_to_sync(llm.chat_complete)(
        messages=[{"role": "system", "content": TITLE_PROMPT}, {"role": "user", "content": transcript}],
        model=model,
        max_tokens=TITLE_MAX_TOKENS,
    )
    _charge(conversation, kind=UsageKind.TITLE, usage=usage, model=model)
    title = _clean_title(text)
    if not title:
        return f"The model gave conversation {conversation_id} no usable title."
    # A person may have named it meanwhile: never overwrite a title.
    Conversation.objects.filter(pk=conversation_id, title="").update(title=title)
    return f"Conversation {conversation_id} titled “{title}”."


# --- Summaries ----------------------------------------------------------------------------------


@dataclass
class HistoryFit:
    """How the stored history of a conversation measures against its context budget."""

    budget: int
    head_tokens: int
    rows: list[Message]

    @property
    def tokens(self) -> int:
        return self.head_tokens + sum(_row_cost(row) for row in self.rows)

    @property
    def overflows(self) -> bool:
        return self.tokens > self.budget


def _row_cost(row: Message) -> int:
    return row.token_count + llm.TOKENS_PER_MESSAGE


def history_fit(conversation: Conversation) -> HistoryFit:
    """The messages the funnel would consider (after the summary) and whether they still fit the budget."""
    persona = persona_of(conversation)
    model = conversation.effective_model
    budget = context_budget(model=model, max_output_tokens=persona.max_output_tokens if persona else 1024)
    rows = list(
        Message.objects.filter(
            conversation_id=conversation.pk,
            id__gt=conversation.summary_until_id or 0,
            role__in=(Role.USER, Role.ASSISTANT),
            status__in=IN_CONTEXT,
        )
        .only("id", "role", "content", "attachments", "token_count")
        .order_by("id")
    )
    head_tokens = llm.count_message_tokens(context_head(conversation, persona), model=model)
    return HistoryFit(budget=budget, head_tokens=head_tokens, rows=rows)


def _line(row: Message) -> str:
    who = "Person" if row.role == Role.USER else "Jarvis"
    count = sum(1 for attachment in row.attachments if attachment.get("url"))
    images = f" [{count} image(s)]" if count else ""
    files = [attachment["name"] for attachment in row.attachments if attachment.get("type") == "document"]
    documents = f" [sent {', '.join(files)}]" if files else ""
    return f"{who}:{images}{documents} {row.content}"


def _next_chunk(rows: list[Message], *, capacity: int, model: str) -> tuple[str, int]:
    """The transcript of the oldest of `rows` that fits `capacity` tokens, and how many rows it holds."""
    lines: list[str] = []
    used = 0
    for row in rows:
        line = _line(row)
        cost = llm.count_tokens(line, model=model) + llm.TOKENS_PER_MESSAGE
        if cost > capacity:
            # One message longer than a whole request: its beginning stands for it.
            line = line[: max(int(len(line) * capacity / cost * 0.9), 1)]
            cost = capacity
        if lines and used + cost > capacity:
            break
        lines.append(line)
        used += cost
    return "\n\n".join(lines), len(lines)


def conversation_summarise(conversation_id: int) -> str:
    """Fold the older history of a conversation into its summary once the history outgrows the context budget.

    The newest messages stay word for word (about half the budget); everything before them goes into
    `Conversation.summary`, and `summary_until_id` tells the funnel where the word-for-word part starts.
    Each model call is a `summary` ledger row. Two workers racing on one conversation cannot both win:
    the summary is written only if nobody moved `summary_until_id` meanwhile.
    """
    conversation = Conversation.objects.select_related("user", "bot", "persona").filter(pk=conversation_id).first()
    if conversation is None:
        return f"Conversation {conversation_id} no longer exists."
    fit = history_fit(conversation)
    if not fit.overflows:
        return f"Conversation {conversation_id} fits its context budget ({fit.tokens} of {fit.budget} tokens)."
    keep_budget = int(fit.budget * KEEP_SHARE)
    kept = 0
    split = len(fit.rows)
    while split > 0 and (split == len(fit.rows) or kept + _row_cost(fit.rows[split - 1]) <= keep_budget):
        # Always keep the newest message, however long: the funnel already answered with it in context.
        kept += _row_cost(fit.rows[split - 1])
        split -= 1
    older = fit.rows[:split]
    if not older:
        return f"Conversation {conversation_id} has nothing old enough to summarise."
    if not _job_may_spend(conversation, "summary"):
        return f"Conversation {conversation_id} was not summarised."
    model = conversation.effective_model
    summary = conversation.summary
    calls = 0
    while older:
        # The summary grows one piece of transcript per call until the older history is folded in.
        prompt = [{"role": "system", "content": SUMMARY_PROMPT}]
        if summary:
            prompt.append({"role": "user", "content": "Summary so far:\n" + summary})
        window = context_budget(model=model, max_output_tokens=SUMMARY_MAX_TOKENS)
        capacity = max(window - llm.count_message_tokens(prompt, model=model) - llm.TOKENS_PER_MESSAGE, 64)
        piece, consumed = _next_chunk(older, capacity=capacity, model=model)
        text, usage = async_to_sync(llm.chat_complete)(
            messages=[*prompt, {"role": "user", "content": "Next part of the conversation:\n" + piece}],
            model=model,
            max_tokens=SUMMARY_MAX_TOKENS,
        )
        _charge(conversation, kind=UsageKind.SUMMARY, usage=usage, model=model)
        calls += 1
        summary = text or summary
        older = older[consumed:]
    until = fit.rows[split - 1].id
    with transaction.atomic():
        written = Conversation.objects.filter(
            pk=conversation_id, summary_until_id=conversation.summary_until_id
        ).update(summary=summary, summary_until_id=until)
    if not written:
        return f"Conversation {conversation_id} was summarised by another worker meanwhile; this summary is dropped."
    logger.info("Summarised conversation %s up to message %s in %d call(s)", conversation_id, until, calls)
    return f"Conversation {conversation_id} summarised up to message {until} in {calls} call(s)."


# --- Daily spend report -------------------------------------------------------------------------


def default_bot() -> Bot | None:
    """The bot that speaks for Jarvis itself: the enabled bot named "default", else the oldest enabled one."""
    bots = Bot.objects.filter(enabled=True)
    return bots.filter(name="default").first() or bots.order_by("pk").first()


def spend_report_text(*, day: date) -> str:
    """The report of one day's spend, in the server's time zone: totals, by kind, by model, top people."""
    zone = timezone.get_current_timezone()
    start = timezone.make_aware(datetime.combine(day, time.min), zone)
    end = start + timedelta(days=1)
    rows = UsageRecord.objects.filter(created_at__gte=start, created_at__lt=end)
    totals = rows.aggregate(cost=Sum("cost_usd"), calls=Count("id"))
    month_start = timezone.make_aware(datetime.combine(day.replace(day=1), time.min), zone)
    month = UsageRecord.objects.filter(created_at__gte=month_start, created_at__lt=end).aggregate(cost=Sum("cost_usd"))[
        "cost"
    ]
    lines = [
        f"Jarvis spend report for {day:%Y-%m-%d} ({zone})",
        f"Total: {format_usd(totals['cost'])} in {totals['calls']} model call(s). "
        f"This month so far: {format_usd(month)}.",
    ]
    if totals["calls"]:
        by_kind = rows.values("kind").annotate(cost=Sum("cost_usd"), calls=Count("id")).order_by("-cost", "kind")
        lines.append(
            "By kind: " + ", ".join(f"{r['kind']} {format_usd(r['cost'])} ({r['calls']})" for r in by_kind) + "."
        )
        by_model = rows.values("model").annotate(cost=Sum("cost_usd"), calls=Count("id")).order_by("-cost", "model")
        lines.append(
            "By model: " + ", ".join(f"{r['model']} {format_usd(r['cost'])} ({r['calls']})" for r in by_model) + "."
        )
        people = (
            rows.filter(user__isnull=False)
            .values("user__username")
            .annotate(cost=Sum("cost_usd"))
            .order_by("-cost", "user__username")[:5]
        )
        lines.append("Top people: " + ", ".join(f"{r['user__username']} {format_usd(r['cost'])}" for r in people) + ".")
        unpriced = rows.filter(priced=False).values_list("model", flat=True).distinct()
        if unpriced:
            lines.append(
                "No price known for: " + ", ".join(sorted(unpriced)) + ". Add them under Model prices in the admin."
            )
    return "\n".join(lines)


async def _send_to_chats(*, token: str, chat_ids: list[int], text: str) -> tuple[list[int], list[str]]:
    sent: list[int] = []
    failed: list[str] = []
    async with telegram.Bot(token, base_url=f"{settings.TELEGRAM_API_BASE_URL}/bot") as client:
        for chat_id in chat_ids:
            try:
                await client.send_message(chat_id=chat_id, text=text)
            except TelegramError as exc:
                # One admin who never started the bot must not keep the report from the others.
                failed.append(f"{chat_id}: {exc}")
            else:
                sent.append(chat_id)
    return sent, failed


def _admin_chat_ids() -> list[int]:
    ids = []
    for raw in settings.ADMIN_TELEGRAM_IDS:
        try:
            ids.append(int(str(raw).strip()))
        except ValueError:
            logger.warning("ADMIN_TELEGRAM_IDS holds %r, which is not a Telegram user id; it is skipped", raw)
    return ids


def spend_report_send(day: str | None = None) -> str:
    """Send yesterday's spend report (or `day`, YYYY-MM-DD) to ADMIN_TELEGRAM_IDS through the default bot."""
    report_day = date.fromisoformat(day) if day else timezone.localdate() - timedelta(days=1)
    chat_ids = _admin_chat_ids()
    if not chat_ids:
        return "No report sent: ADMIN_TELEGRAM_IDS is empty. Put the admins' Telegram user ids there."
    bot = default_bot()
    if bot is None:
        return "No report sent: there is no enabled bot. Set TELEGRAM_BOT_TOKEN or add a bot in the admin."
    text = spend_report_text(day=report_day)
    sent, failed = async_to_sync(_send_to_chats)(token=bot.token, chat_ids=chat_ids, text=text)
    for failure in failed:
        logger.warning("Spend report not delivered to %s", failure)
    return f"Spend report for {report_day} sent to {len(sent)} of {len(chat_ids)} admin(s) via bot {bot.name}."


# --- Retention ----------------------------------------------------------------------------------


def _in_batches(queryset_ids: list[int]) -> list[list[int]]:
    return [queryset_ids[i : i + RETENTION_BATCH] for i in range(0, len(queryset_ids), RETENTION_BATCH)]


def messages_retention() -> str:
    """Delete or anonymise messages older than RETENTION_DAYS (off when 0); the usage ledger stays.

    `delete` removes old messages and conversations with nothing newer; `anonymise` keeps the rows (who,
    when, tokens) but blanks what was said. Either way titles and summaries built from removed text go,
    generated pictures and recordings of old messages are deleted with their files, and stored Telegram
    updates (which hold message text) older than the cut-off are deleted.
    """
    days = settings.RETENTION_DAYS
    if not days:
        return "Retention is off (RETENTION_DAYS is 0): nothing removed."
    mode = settings.RETENTION_MODE
    if mode not in ("delete", "anonymise"):
        raise ValueError(f"RETENTION_MODE is {mode!r}; set it to delete or anonymise.")
    cutoff = timezone.now() - timedelta(days=days)
    old = Message.objects.filter(created_at__lt=cutoff)
    # Summaries that were written from an old message are rebuilt from what remains.
    stale_summaries = list(
        Conversation.objects.filter(
            summary_until_id__isnull=False,
            messages__created_at__lt=cutoff,
            messages__id__lte=F("summary_until_id"),
        )
        .values_list("id", flat=True)
        .distinct()
    )
    with transaction.atomic():
        Conversation.objects.filter(id__in=stale_summaries).update(summary="", summary_until_id=None)
    # Pictures and recordings of old messages go in either mode: each row takes its file with it (botapp.media).
    old_media = MediaFile.objects.filter(Q(created_at__lt=cutoff) | Q(message__created_at__lt=cutoff))
    files = 0
    for batch in _in_batches(list(old_media.values_list("id", flat=True))):
        with transaction.atomic():
            files += MediaFile.objects.filter(id__in=batch).delete()[1].get("botapp.MediaFile", 0)
    # Files people sent in chats go the same way, with their chunks and index (knowledge bases stay).
    documents = documents_expire(before=cutoff)
    updates = 0
    for batch in _in_batches(list(ProcessedUpdate.objects.filter(created_at__lt=cutoff).values_list("id", flat=True))):
        with transaction.atomic():
            updates += ProcessedUpdate.objects.filter(id__in=batch).delete()[0]
    conversations = messages = 0
    if mode == "delete":
        old_conversations = list(Conversation.objects.filter(updated_at__lt=cutoff).values_list("id", flat=True))
        for batch in _in_batches(old_conversations):
            with transaction.atomic():
                deleted = Conversation.objects.filter(id__in=batch).delete()[1]
            conversations += deleted.get("botapp.Conversation", 0)
            messages += deleted.get("botapp.Message", 0)
        for batch in _in_batches(list(old.values_list("id", flat=True))):
            with transaction.atomic():
                messages_forget(within=Message.objects.filter(id__in=batch))
                messages += Message.objects.filter(id__in=batch).delete()[0]
    else:
        pending = old.exclude(content=RETENTION_PLACEHOLDER)
        for batch in _in_batches(list(pending.values_list("id", flat=True))):
            with transaction.atomic():
                messages_forget(within=Message.objects.filter(id__in=batch))
                messages += Message.objects.filter(id__in=batch).update(
                    content=RETENTION_PLACEHOLDER, attachments=[], error="", sender=None, token_count=0
                )
        with transaction.atomic():
            conversations = (
                Conversation.objects.filter(updated_at__lt=cutoff)
                .exclude(title="", summary="")
                .update(title="", summary="", summary_until_id=None)
            )
    verb = "deleted" if mode == "delete" else "anonymised"
    logger.info(
        "Retention (%s days, %s): %d message(s), %d conversation(s), %d stored update(s), %d generated file(s)",
        days,
        mode,
        messages,
        conversations,
        updates,
        files,
    )
    return (
        f"Retention ({days} days): {messages} message(s) and {conversations} conversation(s) {verb}, "
        f"{updates} stored Telegram update(s) and {files} generated file(s) deleted; {documents} document(s) sent in "
        "chats deleted."
    )


# --- Documents ----------------------------------------------------------------------------------


def document_ingest(document_id: int) -> str:
    """Read, chunk, index and embed an uploaded file (queued by botapp.documents.services)."""
    from botapp.documents.ingest import document_ingest as ingest

    return ingest(document_id)
