"""How far a document is, in the words Telegram, the web page and the admin show."""

from __future__ import annotations

from typing import Any

from django.utils.translation import gettext as _

from botapp.documents.models import Document, DocumentState


def progress_label(document: Document) -> str:
    """ "reading page 3 of 12", "embedding 2 of 4", "ready: 12 pages", "failed: <reason>", ..."""
    state, done, total = document.state, document.progress_done, document.progress_total
    values = {"done": done, "total": total}
    if state == DocumentState.QUEUED:
        return _("queued")
    if state == DocumentState.READING:
        return _("reading page %(done)d of %(total)d") % values if total else _("reading")
    if state == DocumentState.EMBEDDING:
        return _("embedding %(done)d of %(total)d") % values
    if state == DocumentState.SUMMARISING:
        return _("summarising part %(done)d of %(total)d") % values
    if state == DocumentState.FAILED:
        return _("failed: %(reason)s") % {"reason": document.reason}
    size = (
        _("%(pages)d pages") % {"pages": document.pages}
        if document.pages
        else _("%(chunks)d parts") % {"chunks": document.chunk_count}
    )
    label = _("ready: %(size)s") % {"size": size}
    if not document.embedding_model:
        label += ", " + _("searched by words only")
    return label


def progress_percent(document: Document) -> int:
    """A rough share of the work done, for a progress bar: reading, then embedding, then summarising."""
    if document.state in (DocumentState.READY, DocumentState.FAILED):
        return 100
    share = document.progress_done / document.progress_total if document.progress_total else 0
    start, width = {
        DocumentState.QUEUED: (0, 0),
        DocumentState.READING: (0, 40),
        DocumentState.EMBEDDING: (40, 50),
        DocumentState.SUMMARISING: (90, 10),
    }[document.state]
    return int(start + width * share)


def progress_json(document: Document) -> dict[str, Any]:
    return {
        "id": document.pk,
        "name": document.file_name,
        "state": document.state,
        "busy": document.busy,
        "label": progress_label(document),
        "percent": progress_percent(document),
    }


def documents_of(ids: list[int]) -> list[Document]:
    """The documents with these ids, in upload order, as the progress displays read them."""
    return list(Document.objects.filter(pk__in=ids).defer("summary").order_by("created_at", "id"))
