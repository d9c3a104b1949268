"""A conversation's title and summary: the model calls a worker makes once an answer is stored.

Each call is a row in the usage ledger, charged to the conversation's owner. The summary is measured against
the same context head the funnel sends (`botapp.context.history_fit`), so it is written exactly when the
history stops fitting what the model is sent.
"""

from __future__ import annotations

import logging
import re
from decimal import Decimal

from asgiref.sync import async_to_sync
from django.db import transaction

from botapp import llm
from botapp.context import IN_CONTEXT, context_budget, history_fit, row_cost
from botapp.models import Conversation, Message, Role, UsageKind, UsageRecord
from botapp.usage import budget_refusal, usage_record_create

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


def _may_spend(conversation: Conversation, job: str) -> bool:
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


def conversation_title_write(*, conversation_id: int) -> str:
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
    if not first or not _may_spend(conversation, "title"):
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


def conversation_summary_update(*, conversation_id: int) -> str:
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
    while split > 0 and (split == len(fit.rows) or kept + row_cost(fit.rows[split - 1]) <= keep_budget):
        # Always keep the newest message, however long: the funnel already answered with it in context.
        kept += row_cost(fit.rows[split - 1])
        split -= 1
    older = fit.rows[:split]
    if not older:
        return f"Conversation {conversation_id} has nothing old enough to summarise."
    if not _may_spend(conversation, "summary"):
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
