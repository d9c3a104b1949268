"""Background jobs run by the django-q2 workers, queued and scheduled by dotted path ("botapp.tasks.NAME").

Each job takes ids, not objects, so it can run in any worker on any machine, and only calls the service that
does the work: titles and summaries (`botapp.summaries`), the spend report (`botapp.spend_report`), retention
(`botapp.retention`) and documents (`botapp.documents.ingest`).
"""

from __future__ import annotations

import logging
from datetime import date

from botapp import llm
from botapp.retention import retention_apply
from botapp.spend_report import spend_report_deliver
from botapp.summaries import conversation_summary_update, conversation_title_write

logger = logging.getLogger(__name__)


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


def conversation_title(conversation_id: int) -> str:
    """Give an untitled conversation a short title (a `title` ledger row)."""
    return conversation_title_write(conversation_id=conversation_id)


def conversation_summarise(conversation_id: int) -> str:
    """Fold the older history of a conversation into its summary once it outgrows the context budget."""
    return conversation_summary_update(conversation_id=conversation_id)


def spend_report_send(day: str | None = None) -> str:
    """Scheduled daily: send yesterday's spend report (or `day`, YYYY-MM-DD) to ADMIN_TELEGRAM_IDS."""
    return spend_report_deliver(day=date.fromisoformat(day) if day else None)


def messages_retention() -> str:
    """Scheduled daily: delete or anonymise messages older than RETENTION_DAYS (off when 0)."""
    return retention_apply()


def document_ingest(document_id: int) -> str:
    """Read, chunk, index and embed an uploaded file (queued by botapp.documents.services)."""
    from botapp.documents.ingest import document_ingest as ingest

    return ingest(document_id)
