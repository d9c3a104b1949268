"""Admin for tools: MCP servers (their tools listed with the official SDK), tools with a global switch,
every tool call on record with filters, and the models that refuse tools. Imported by botapp.admin."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.db.models import Count, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.text import Truncator
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from botapp.admin.base import LargeTableAdmin, ReadOnlyAdmin, conversation_link
from botapp.models import McpServer, ModelToolSupport, Tool, ToolCall
from botapp.tools.services import tool_refresh_message, tools_set_enabled


class McpServerForm(forms.ModelForm):
    new_auth_header_value = forms.CharField(
        label=_("Auth header value"),
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text=_(
            "For example “Bearer …”. Leave empty to keep the current value. Stored encrypted and never shown in full."
        ),
    )
    clear_auth_header = forms.BooleanField(label=_("Remove the auth header value"), required=False)

    class Meta:
        model = McpServer
        fields = ["name", "url", "enabled", "auth_header_name", "new_auth_header_value", "clear_auth_header"]

    def save(self, commit: bool = True) -> McpServer:
        if self.cleaned_data.get("clear_auth_header"):
            self.instance.auth_header_value = ""
        elif self.cleaned_data.get("new_auth_header_value"):
            self.instance.auth_header_value = self.cleaned_data["new_auth_header_value"].strip()
        return super().save(commit=commit)


class ServerToolInline(admin.TabularInline):
    model = Tool
    fields = ["name", "remote_name", "short_description", "enabled", "available"]
    readonly_fields = ["name", "remote_name", "short_description", "available"]
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    @admin.display(description=_("description"))
    def short_description(self, obj: Tool) -> str:
        return Truncator(obj.description).chars(120)


@admin.register(McpServer)
class McpServerAdmin(admin.ModelAdmin):
    form = McpServerForm
    list_display = ["name", "url", "enabled", "auth_header_hint", "tool_count", "tools_listed_at", "list_error"]
    list_filter = ["enabled", "from_environment"]
    readonly_fields = ["auth_header_hint", "from_environment", "tools_listed_at", "list_error"]
    inlines = [ServerToolInline]
    actions = ["list_tools"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[McpServer]:
        return super().get_queryset(request).annotate(tool_count=Count("tools"))

    @admin.display(description=_("tools"), ordering="tool_count")
    def tool_count(self, obj: McpServer) -> int:
        return obj.tool_count

    def save_model(self, request: HttpRequest, obj: McpServer, form: forms.Form, change: bool) -> None:
        super().save_model(request, obj, form, change)
        # Saved, then listed: a server that is down is saved all the same, with the reason shown.
        text = tool_refresh_message(obj)
        self.message_user(request, text, messages.WARNING if obj.list_error else messages.SUCCESS)

    @admin.action(description=_("List the tools again"))
    def list_tools(self, request: HttpRequest, queryset: QuerySet[McpServer]) -> None:
        for server in queryset:
            text = tool_refresh_message(server)
            self.message_user(request, text, messages.WARNING if server.list_error else messages.SUCCESS)


@admin.register(Tool)
class ToolAdmin(admin.ModelAdmin):
    list_display = ["name", "kind", "server", "title", "enabled", "available", "persona_count", "call_count"]
    list_filter = ["kind", "enabled", "available", "server"]
    list_select_related = ["server"]
    search_fields = ["name", "title", "description"]
    fields = ["name", "kind", "server", "remote_name", "title", "description", "input_schema", "enabled", "available"]
    readonly_fields = ["name", "kind", "server", "remote_name", "title", "description", "input_schema", "available"]
    actions = ["switch_off", "switch_on"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Tool]:
        return super().get_queryset(request).annotate(persona_count=Count("personas", distinct=True))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # built-ins come from code, MCP tools from their servers

    @admin.display(description=_("personas"), ordering="persona_count")
    def persona_count(self, obj: Tool) -> int:
        return obj.persona_count

    @admin.display(description=_("calls"))
    def call_count(self, obj: Tool) -> str:
        url = reverse("admin:botapp_toolcall_changelist") + f"?tool__id__exact={obj.pk}"
        return format_html('<a href="{}">{}</a>', url, _("calls"))

    @admin.action(description=_("Switch off everywhere (no persona gets them)"))
    def switch_off(self, request: HttpRequest, queryset: QuerySet[Tool]) -> None:
        changed = tools_set_enabled(queryset, enabled=False)
        self.message_user(request, ngettext("%d tool switched off.", "%d tools switched off.", changed) % changed)

    @admin.action(description=_("Switch on again (for the personas that enable them)"))
    def switch_on(self, request: HttpRequest, queryset: QuerySet[Tool]) -> None:
        changed = tools_set_enabled(queryset, enabled=True)
        self.message_user(request, ngettext("%d tool switched on.", "%d tools switched on.", changed) % changed)


class PersonFilter(admin.SimpleListFilter):
    """People who made tool calls (the latest 100 of them), without listing every account."""

    title = _("person")
    parameter_name = "user"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        recent = (
            ToolCall.objects.filter(user__isnull=False).order_by("-id").values_list("user_id", "user__username")[:2000]
        )
        seen: dict[int, str] = {}
        for user_id, username in recent:
            seen.setdefault(user_id, username)
            if len(seen) >= 100:
                break
        return [(str(user_id), username) for user_id, username in seen.items()]

    def queryset(self, request: HttpRequest, queryset: QuerySet[ToolCall]) -> QuerySet[ToolCall]:
        value = self.value()
        return queryset.filter(user_id=value) if value and value.isdigit() else queryset


@admin.register(ToolCall)
class ToolCallAdmin(ReadOnlyAdmin):
    list_display = [
        "created_at",
        "tool_name",
        "user",
        "status",
        "duration_ms",
        "short_arguments",
        "short_result",
        "answer_link",
    ]
    list_filter = ["status", "tool", PersonFilter, "created_at"]
    list_select_related = ["user"]
    search_fields = ["=tool_name", "arguments", "user__username"]
    search_help_text = _("Search by exact tool name, text in the arguments, or username.")
    date_hierarchy = "created_at"
    ordering = ["-id"]
    fields = [
        "created_at",
        "tool_name",
        "tool",
        "user",
        "conversation",
        "message",
        "round",
        "position",
        "call_id",
        "status",
        "duration_ms",
        "arguments",
        "error",
        "result",
        "result_chars",
        "sources",
        "token_count",
    ]

    @admin.display(description=_("arguments"))
    def short_arguments(self, obj: ToolCall) -> str:
        return Truncator(obj.arguments).chars(80)

    @admin.display(description=_("result"))
    def short_result(self, obj: ToolCall) -> str:
        return Truncator(obj.error or obj.result).chars(80)

    @admin.display(description=_("answer"))
    def answer_link(self, obj: ToolCall) -> str:
        return conversation_link(obj, _("transcript"), fragment=f"#message-{obj.message_id}")


@admin.register(ModelToolSupport)
class ModelToolSupportAdmin(LargeTableAdmin):
    list_display = ["model", "noted_at", "short_error"]
    readonly_fields = ["model", "error", "noted_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    @admin.display(description=_("what the provider said"))
    def short_error(self, obj: ModelToolSupport) -> str:
        return Truncator(obj.error).chars(120)
