"""Conversations with their transcript and exports, messages, generated files and the usage ledger."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.text import Truncator
from django.utils.translation import gettext_lazy as _

from botapp import admin_views, search
from botapp.admin.base import ConversationColumn, LargeTableAdmin, ReadOnlyAdmin, money
from botapp.documents.admin import transcript_documents
from botapp.models import Conversation, MediaFile, Message, Role, UsageRecord
from botapp.selectors import conversation_transcript, conversations_with_totals
from botapp.staff import conversations_export_json, conversations_export_markdown
from botapp.web.markdown import markdown_to_html

# --- Conversations, messages and the ledger -----------------------------------------------------


@admin.register(Conversation)
class ConversationAdmin(LargeTableAdmin):
    list_display = ["__str__", "user", "channel", "bot", "persona", "message_count", "cost", "updated_at"]
    list_filter = ["channel", "bot", "persona", "is_active", "created_at"]
    list_select_related = ["user", "bot", "persona"]
    # Searched by botapp.search (get_search_results): these fields, and the text of messages through their
    # full-text index rather than a scan of every message.
    search_fields = ["title", "user__username", "user__telegram__username"]
    search_help_text = _("Search by title, username, Telegram username or the text of any message.")
    fields = [
        "title",
        "user",
        "channel",
        "bot",
        "telegram_chat_id",
        "persona",
        "model",
        "voice_answers",
        "is_active",
        "summary",
    ]
    readonly_fields = ["user", "channel", "bot", "telegram_chat_id"]
    actions = ["export_markdown", "export_json"]
    change_form_template = "admin/botapp/conversation/change_form.html"

    def get_queryset(self, request: HttpRequest) -> QuerySet[Conversation]:
        return conversations_with_totals(super().get_queryset(request))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Conversation], search_term: str
    ) -> tuple[QuerySet[Conversation], bool]:
        return search.conversations_admin_search(queryset, search_term), False

    @admin.display(description=_("messages"), ordering="message_count")
    def message_count(self, obj: Conversation) -> int:
        return obj.message_count

    @admin.display(description=_("cost"))
    def cost(self, obj: Conversation) -> str:
        return money(obj.total_cost)

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict | None = None
    ) -> HttpResponse:
        conversation = self.get_object(request, object_id)
        extra_context = dict(extra_context or {})
        if conversation is not None:
            transcript = conversation_transcript(conversation=conversation)
            for message in transcript:
                if message.role == Role.ASSISTANT:
                    message.html = markdown_to_html(message.content)
            transcript_documents(transcript)
            extra_context.update(
                transcript=transcript,
                transcript_truncated=len(transcript) < conversation.message_count,
                conversation_cost=conversation.total_cost,
                conversation_messages=conversation.message_count,
            )
        return super().change_view(request, object_id, form_url, extra_context)

    @admin.action(description=_("Export the selected conversations as Markdown"))
    def export_markdown(self, request: HttpRequest, queryset: QuerySet[Conversation]) -> HttpResponse:
        body = conversations_export_markdown(ids=queryset.values_list("pk", flat=True))
        return _download(body, content_type="text/markdown", filename="conversations.md")

    @admin.action(description=_("Export the selected conversations as JSON"))
    def export_json(self, request: HttpRequest, queryset: QuerySet[Conversation]) -> HttpResponse:
        body = conversations_export_json(ids=queryset.values_list("pk", flat=True))
        return _download(body, content_type="application/json", filename="conversations.json")


def _download(body: str, *, content_type: str, filename: str) -> HttpResponse:
    response = HttpResponse(body, content_type=f"{content_type}; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@admin.register(Message)
class MessageAdmin(ConversationColumn, ReadOnlyAdmin):
    list_display = [
        "id",
        "conversation_link",
        "role",
        "status",
        "short_content",
        "input_tokens",
        "output_tokens",
        "created_at",
    ]
    list_filter = ["role", "status"]
    list_select_related = ["conversation"]
    # Searched by botapp.search (get_search_results): `=ID`, and the text through the full-text index.
    search_fields = ["=conversation__id"]
    search_help_text = _("Search the text of messages, or =ID for a conversation's messages.")
    ordering = ["-id"]

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Message], search_term: str
    ) -> tuple[QuerySet[Message], bool]:
        return search.messages_admin_search(queryset, search_term), False

    @admin.display(description=_("content"))
    def short_content(self, obj: Message) -> str:
        return Truncator(obj.content or obj.error).chars(80)


@admin.register(MediaFile)
class MediaFileAdmin(ConversationColumn, ReadOnlyAdmin):
    list_display = ["id", "kind", "conversation_link", "model", "size_bytes", "dimensions", "created_at", "open_file"]
    list_filter = ["kind", "model"]
    list_select_related = ["conversation"]
    search_fields = ["prompt", "=conversation__id"]
    ordering = ["-id"]

    @admin.display(description=_("size"))
    def dimensions(self, obj: MediaFile) -> str:
        if obj.width:
            return f"{obj.width}×{obj.height}"
        return f"{obj.duration_seconds} s" if obj.duration_seconds is not None else "-"

    @admin.display(description=_("file"))
    def open_file(self, obj: MediaFile) -> str:
        return format_html('<a href="{}">{}</a>', reverse("web:media", args=[obj.pk]), _("open"))


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    list_display = [
        "created_at",
        "user",
        "channel",
        "bot",
        "model",
        "kind",
        "input_tokens",
        "output_tokens",
        "cost",
        "priced",
        "status",
    ]
    list_filter = ["kind", "status", "channel", "priced", "bot"]
    list_select_related = ["user", "bot"]
    search_fields = ["=model", "user__username"]
    # The ledger is appended to in time order, so newest-appended first needs no extra index.
    ordering = ["-id"]
    change_list_template = "admin/botapp/usagerecord/change_list.html"

    @admin.display(description=_("cost (USD)"), ordering="cost_usd")
    def cost(self, obj: UsageRecord) -> str:
        return money(obj.cost_usd)

    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view
        return [
            path("dashboard/", wrap(self.dashboard_view), name="botapp_usage_dashboard"),
            path("dashboard/ledger.csv", wrap(self.ledger_csv_view), name="botapp_usage_ledger_csv"),
            *super().get_urls(),
        ]

    def dashboard_view(self, request: HttpRequest) -> HttpResponse:
        return admin_views.usage_dashboard(request, model_admin=self)

    def ledger_csv_view(self, request: HttpRequest) -> HttpResponse:
        return admin_views.usage_ledger_csv(request, model_admin=self)
