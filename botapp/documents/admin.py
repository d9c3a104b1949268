"""Admin for knowledge bases and documents: upload files, attach personas, watch indexing, re-index, remove."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.defaultfilters import filesizeformat
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from botapp.admin.base import conversation_link
from botapp.documents.models import Document, DocumentChunk, DocumentState, KnowledgeBase, MessageExcerpt
from botapp.documents.progress import progress_json
from botapp.documents.services import Upload, documents_reindex, knowledge_base_files_add
from botapp.models import Message


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    """Several files in one field (Django's documented pattern for `multiple` uploads)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("widget", MultipleFileInput())
        super().__init__(*args, **kwargs)

    def clean(self, data: Any, initial: Any = None) -> list[Any]:
        single = super().clean
        if isinstance(data, list | tuple):
            return [single(item, initial) for item in data]
        return [single(data, initial)] if data else []


class KnowledgeBaseForm(forms.ModelForm):
    files = MultipleFileField(
        label=_("Add files"),
        required=False,
        help_text=_(
            "PDF, Word (.docx), text, Markdown, HTML, CSV or source files. They are indexed in the background; "
            "their progress shows below."
        ),
    )

    class Meta:
        model = KnowledgeBase
        fields = ["name", "description", "owner", "personas"]


def progress_cell(document: Document) -> str:
    """A file's state with a progress bar, updated in place by documents_admin.js while it is being indexed."""
    status = progress_json(document)
    url = reverse("admin:botapp_document_progress")
    bar = format_html('<progress max="100" value="{}"></progress> ', status["percent"]) if status["busy"] else ""
    return format_html(
        '<span class="document-progress" data-document-id="{}" data-busy="{}" data-url="{}">{}<span>{}</span></span>',
        document.pk,
        "1" if status["busy"] else "",
        url,
        bar,
        status["label"],
    )


class DocumentInline(admin.TabularInline):
    model = Document
    fk_name = "knowledge_base"
    extra = 0
    can_delete = True
    show_change_link = True
    fields = ["file_name", "progress", "pages", "chunk_count", "size", "created_at"]
    readonly_fields = fields
    verbose_name = _("file")
    verbose_name_plural = _("files (tick “Delete” to remove one)")

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    @admin.display(description=_("state"))
    def progress(self, obj: Document) -> str:
        return progress_cell(obj)

    @admin.display(description=_("size"))
    def size(self, obj: Document) -> str:
        return filesizeformat(obj.size_bytes)


@admin.register(KnowledgeBase)
class KnowledgeBaseAdmin(admin.ModelAdmin):
    form = KnowledgeBaseForm
    list_display = ["name", "owner", "file_count", "ready_count", "persona_names", "created_at"]
    search_fields = ["name", "description"]
    filter_horizontal = ["personas"]
    inlines = [DocumentInline]
    actions = ["reindex_all"]

    class Media:
        js = ["botapp/documents_admin.js"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[KnowledgeBase]:
        return (
            super()
            .get_queryset(request)
            .select_related("owner")
            .annotate(
                file_count=Count("documents", distinct=True),
                ready_count=Count("documents", filter=Q(documents__state=DocumentState.READY), distinct=True),
            )
        )

    @admin.display(description=_("files"), ordering="file_count")
    def file_count(self, obj: KnowledgeBase) -> int:
        return obj.file_count

    @admin.display(description=_("ready"))
    def ready_count(self, obj: KnowledgeBase) -> int:
        return obj.ready_count

    @admin.display(description=_("personas"))
    def persona_names(self, obj: KnowledgeBase) -> str:
        return ", ".join(persona.name for persona in obj.personas.all()) or "-"

    def save_model(self, request: HttpRequest, obj: KnowledgeBase, form: forms.Form, change: bool) -> None:
        if obj.owner_id is None:
            obj.owner = request.user
        super().save_model(request, obj, form, change)

    def save_related(self, request: HttpRequest, form: forms.Form, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        files = form.cleaned_data.get("files") or []
        if not files:
            return
        uploads = [Upload(file_name=f.name, data=f.read(), mime_type=f.content_type or "") for f in files]
        added, refused = knowledge_base_files_add(
            knowledge_base=form.instance, uploads=uploads, uploaded_by=request.user
        )
        if added:
            self.message_user(
                request,
                ngettext(
                    "%(count)d file is queued for indexing; its progress shows under Files.",
                    "%(count)d files are queued for indexing; their progress shows under Files.",
                    len(added),
                )
                % {"count": len(added)},
                messages.SUCCESS,
            )
        for sentence in refused:
            self.message_user(request, sentence, messages.ERROR)

    def has_reindex_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("botapp.change_document")

    @admin.action(description=_("Re-index every file of the selected knowledge bases"), permissions=["reindex"])
    def reindex_all(self, request: HttpRequest, queryset: QuerySet[KnowledgeBase]) -> None:
        count = documents_reindex(documents=Document.objects.filter(knowledge_base__in=queryset))
        self.message_user(request, _("%(count)d file(s) queued for indexing.") % {"count": count})


@admin.register(Document)
class DocumentAdmin(admin.ModelAdmin):
    list_display = ["file_name", "place", "progress", "pages", "chunk_count", "embedding_model", "created_at"]
    list_filter = ["state", "knowledge_base", "channel"]
    list_select_related = ["knowledge_base", "conversation"]
    search_fields = ["file_name"]
    readonly_fields = [
        "file_name",
        "knowledge_base",
        "conversation",
        "uploaded_by",
        "channel",
        "mime_type",
        "size_bytes",
        "progress",
        "reason",
        "pages",
        "chunk_count",
        "token_count",
        "embedding_model",
        "embedding_dimensions",
        "summary",
        "created_at",
        "indexed_at",
    ]
    fields = readonly_fields
    actions = ["reindex"]

    class Media:
        js = ["botapp/documents_admin.js"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Document]:
        return super().get_queryset(request).defer("summary")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    @admin.display(description=_("in"))
    def place(self, obj: Document) -> str:
        if obj.knowledge_base_id:
            url = reverse("admin:botapp_knowledgebase_change", args=[obj.knowledge_base_id])
            return format_html('<a href="{}">{}</a>', url, obj.knowledge_base)
        return conversation_link(obj)

    @admin.display(description=_("state"))
    def progress(self, obj: Document) -> str:
        return progress_cell(obj)

    def has_reindex_permission(self, request: HttpRequest) -> bool:
        # The list is read-only (files change only by indexing), but re-indexing takes the right to change.
        return request.user.has_perm("botapp.change_document")

    @admin.action(description=_("Re-index the selected files"), permissions=["reindex"])
    def reindex(self, request: HttpRequest, queryset: QuerySet[Document]) -> None:
        count = documents_reindex(documents=queryset)
        self.message_user(request, _("%(count)d file(s) queued for indexing.") % {"count": count})

    def get_urls(self) -> list[URLPattern]:
        progress = self.admin_site.admin_view(self.progress_view)
        return [path("progress/", progress, name="botapp_document_progress"), *super().get_urls()]

    def progress_view(self, request: HttpRequest) -> HttpResponse:
        """The state of the files `?ids=1,2,3`, for the progress cells to follow."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        ids = [int(part) for part in request.GET.get("ids", "").split(",") if part.strip().isdigit()][:200]
        documents = Document.objects.filter(pk__in=ids).defer("summary")
        return JsonResponse({str(document.pk): progress_json(document) for document in documents})


# --- The conversation transcript ------------------------------------------------------------------


def transcript_documents(transcript: list[Message]) -> None:
    """Give each message of an admin transcript its files (`files`) and the excerpts it was sent (`sent_excerpts`)."""
    answers = [m.pk for m in transcript if m.role == "assistant"]
    excerpts: dict[int, list[MessageExcerpt]] = {}
    rows = MessageExcerpt.objects.filter(message_id__in=answers).order_by("message_id", "label")
    chunk_ids = [row.chunk_id for row in rows if row.chunk_id]
    texts = dict(DocumentChunk.objects.filter(pk__in=chunk_ids).values_list("pk", "text"))
    for row in rows:
        row.text = texts.get(row.chunk_id, "")
        excerpts.setdefault(row.message_id, []).append(row)
    file_ids = [a["document_id"] for m in transcript for a in m.attachments or () if a.get("type") == "document"]
    files = {d.pk: d for d in Document.objects.filter(pk__in=file_ids).defer("summary")}
    for message in transcript:
        message.sent_excerpts = excerpts.get(message.pk, [])
        attached = [a for a in message.attachments or () if a.get("type") == "document"]
        message.files = [files[a["document_id"]] for a in attached if a["document_id"] in files]
        message.image_count = sum(1 for a in message.attachments or () if a.get("url"))
