"""Django admin for Jarvis: people, bots, personas, prices, conversations, the ledger and the usage dashboard."""

from __future__ import annotations

from functools import cached_property

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_permission_codename, get_user_model
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.formats import number_format
from django.utils.html import format_html
from django.utils.text import Truncator
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext, pgettext_lazy
from django_q import admin as django_q_admin
from django_q.models import Failure, Success

from botapp import admin_views, search
from botapp.accounts import INVITATION_LIFETIME, invitation_issue, invitation_state
from botapp.broadcast import BroadcastError, broadcast_create
from botapp.documents.admin import transcript_documents
from botapp.models import (
    Bot,
    BotUser,
    Broadcast,
    Conversation,
    Invitation,
    MediaFile,
    Message,
    ModelImagePrice,
    ModelPrice,
    Persona,
    Profile,
    Role,
    TelegramIdentity,
    UsageRecord,
)
from botapp.selectors import (
    conversation_transcript,
    conversations_with_totals,
    table_row_estimate,
    users_with_month_totals,
)
from botapp.staff import (
    TokenCheckError,
    bot_token_check,
    conversations_export_json,
    conversations_export_markdown,
    profiles_set_blocked,
)
from botapp.usage import format_usd, profile_for
from botapp.web.markdown import markdown_to_html

User = get_user_model()

admin.site.site_header = _("Jarvis administration")
admin.site.site_title = _("Jarvis admin")
admin.site.index_title = _("Jarvis: people, bots, conversations and costs")


def money(value: object) -> str:
    return format_usd(value) if value is not None else "-"


# --- Large tables -------------------------------------------------------------------------------


class EstimatedCountPaginator(Paginator):
    """Counts at most CAP rows; past that, an unfiltered table's size is estimated, never scanned.

    A filtered selection larger than CAP shows as CAP + 1 rows: narrow the filter to see the rest.
    """

    CAP = 10_000

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        capped = queryset.order_by().values("pk")[: self.CAP + 1].count()
        if capped <= self.CAP:
            return capped
        if not queryset.query.where:
            estimate = table_row_estimate(queryset.model)
            if estimate is not None and estimate > self.CAP:
                return estimate
        return capped


class LargeTableAdmin(admin.ModelAdmin):
    """A changelist that stays fast on a table of millions of rows: no full COUNT(*) per page."""

    paginator = EstimatedCountPaginator
    show_full_result_count = False
    list_per_page = 50


class ReadOnlyAdmin(LargeTableAdmin):
    """Rows the admin may read and never change: messages and the append-only ledger."""

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


# --- People -------------------------------------------------------------------------------------


class ProfileInline(admin.StackedInline):
    model = Profile
    fields = [
        "is_blocked", "daily_budget_usd", "monthly_budget_usd", "unlimited_budget", "language_code", "time_zone",
    ]  # fmt: skip
    can_delete = False
    max_num = 1
    verbose_name = verbose_name_plural = _("Access and budget")


class TelegramIdentityInline(admin.StackedInline):
    model = TelegramIdentity
    fields = ["telegram_id", "username", "first_name", "last_name", "language_code", "created_at", "updated_at"]
    readonly_fields = fields
    can_delete = False
    extra = 0
    max_num = 1

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


admin.site.unregister(User)

# What makes someone powerful: only a superuser may grant it, so staff who may change people cannot promote
# themselves or anyone else.
SUPERUSER_ONLY_FIELDS = ("is_superuser", "groups", "user_permissions")


@admin.register(User)
class JarvisUserAdmin(UserAdmin):
    inlines = [ProfileInline, TelegramIdentityInline]
    list_display = [
        "username",
        "telegram_account",
        "is_staff",
        "blocked",
        "budget",
        "month_messages",
        "month_tokens",
        "month_cost",
        "last_login",
    ]
    list_filter = ["is_staff", "is_active", "jarvis_profile__is_blocked"]
    list_select_related = ["telegram", "jarvis_profile"]
    search_fields = ["username", "email", "first_name", "last_name", "telegram__username", "=telegram__telegram_id"]
    actions = ["block", "unblock"]
    paginator = EstimatedCountPaginator
    show_full_result_count = False

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return users_with_month_totals(super().get_queryset(request))

    def get_readonly_fields(self, request: HttpRequest, obj: User | None = None) -> list[str]:
        fields = list(super().get_readonly_fields(request, obj))
        if not request.user.is_superuser:
            fields += [name for name in SUPERUSER_ONLY_FIELDS if name not in fields]
        return fields

    def has_change_permission(self, request: HttpRequest, obj: User | None = None) -> bool:
        # Another superuser's page (and password form) is read-only to staff who are not superusers.
        if obj is not None and obj.is_superuser and not request.user.is_superuser:
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: User | None = None) -> bool:
        if obj is not None and obj.is_superuser and not request.user.is_superuser:
            return False
        return super().has_delete_permission(request, obj)

    def get_deleted_objects(self, objs: QuerySet | list, request: HttpRequest) -> tuple:
        # "Delete selected" asks the model-wide permission only: a superuser among the selection needs more.
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        if not request.user.is_superuser and any(getattr(user, "is_superuser", False) for user in objs):
            perms_needed.add(_("superuser (only a superuser can delete one)"))
        return deleted, counts, perms_needed, protected

    def _changeable(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        """`queryset` less the superusers, unless the admin is one; says so when some are left out."""
        if request.user.is_superuser:
            return queryset
        skipped = queryset.filter(is_superuser=True).count()
        if skipped:
            self.message_user(
                request,
                ngettext(
                    "Only a superuser can block or unblock a superuser: %d superuser was left as they were.",
                    "Only a superuser can block or unblock a superuser: %d superusers were left as they were.",
                    skipped,
                )
                % skipped,
                messages.WARNING,
            )
        return queryset.filter(is_superuser=False)

    @admin.display(description=_("Telegram"), ordering="telegram__username")
    def telegram_account(self, obj: User) -> str:
        identity = getattr(obj, "telegram", None)
        return str(identity) if identity else "-"

    @admin.display(description=_("blocked"), boolean=True, ordering="jarvis_profile__is_blocked")
    def blocked(self, obj: User) -> bool:
        profile = getattr(obj, "jarvis_profile", None)
        return bool(profile and profile.is_blocked)

    @admin.display(description=_("budget"))
    def budget(self, obj: User) -> str:
        profile = getattr(obj, "jarvis_profile", None)
        if profile is not None and profile.unlimited_budget:
            return _("unlimited")
        daily = profile.daily_budget_usd if profile is not None else None
        monthly = profile.monthly_budget_usd if profile is not None else None
        parts = [
            _("%(amount)s a day") % {"amount": format_usd(daily)} if daily is not None else "",
            _("%(amount)s a month") % {"amount": format_usd(monthly)} if monthly is not None else "",
        ]
        return " · ".join(part for part in parts if part) or _("default")

    def get_inlines(self, request: HttpRequest, obj: User | None) -> list:
        # The add form only asks for a name and password; access and budget follow on the next page.
        return self.inlines if obj is not None else []

    def save_model(self, request: HttpRequest, obj: User, form: forms.Form, change: bool) -> None:
        super().save_model(request, obj, form, change)
        profile_for(obj)

    @admin.display(description=_("messages this month"), ordering="month_messages")
    def month_messages(self, obj: User) -> str:
        return number_format(obj.month_messages, force_grouping=True)

    @admin.display(description=_("tokens this month"), ordering="month_tokens")
    def month_tokens(self, obj: User) -> str:
        return number_format(obj.month_tokens, force_grouping=True)

    @admin.display(description=_("cost this month"), ordering="month_cost")
    def month_cost(self, obj: User) -> str:
        return money(obj.month_cost)

    @admin.action(description=_("Block the selected people (no answers, no spend)"), permissions=["change"])
    def block(self, request: HttpRequest, queryset: QuerySet) -> None:
        changed = profiles_set_blocked(users=self._changeable(request, queryset), blocked=True)
        self.message_user(request, ngettext("%d person blocked.", "%d people blocked.", changed) % changed)

    @admin.action(description=_("Unblock the selected people"), permissions=["change"])
    def unblock(self, request: HttpRequest, queryset: QuerySet) -> None:
        changed = profiles_set_blocked(users=self._changeable(request, queryset), blocked=False)
        self.message_user(request, ngettext("%d person unblocked.", "%d people unblocked.", changed) % changed)


admin.site.unregister(Group)


@admin.register(Group)
class JarvisGroupAdmin(GroupAdmin):
    def get_readonly_fields(self, request: HttpRequest, obj: Group | None = None) -> list[str]:
        # What a group grants is granted to its members: staff could otherwise promote their own group.
        fields = list(super().get_readonly_fields(request, obj))
        if not request.user.is_superuser and "permissions" not in fields:
            fields.append("permissions")
        return fields


@admin.register(TelegramIdentity)
class TelegramIdentityAdmin(LargeTableAdmin):
    list_display = ["telegram_id", "username", "first_name", "language_code", "user", "created_at"]
    list_select_related = ["user"]
    raw_id_fields = ["user"]
    search_fields = ["username", "=telegram_id"]

    def has_change_permission(self, request: HttpRequest, obj: TelegramIdentity | None = None) -> bool:
        # A superuser's Telegram account is part of them: only a superuser moves or edits it.
        if obj is not None and obj.user.is_superuser and not request.user.is_superuser:
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: TelegramIdentity | None = None) -> bool:
        if obj is not None and obj.user.is_superuser and not request.user.is_superuser:
            return False
        return super().has_delete_permission(request, obj)


# --- Bots ---------------------------------------------------------------------------------------


class BotForm(forms.ModelForm):
    new_token = forms.CharField(
        label=_("Token"),
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text=_("Leave empty to keep the current token. It is stored encrypted and never shown in full."),
    )

    class Meta:
        model = Bot
        fields = ["name", "new_token", "enabled", "default_persona", "access_policy", "allowed_users"]

    def clean(self) -> dict:
        cleaned = super().clean()
        if not self.instance.token_encrypted and not cleaned.get("new_token"):
            self.add_error("new_token", _("A new bot needs its token from @BotFather."))
        return cleaned

    def save(self, commit: bool = True) -> Bot:
        if self.cleaned_data.get("new_token"):
            self.instance.token = self.cleaned_data["new_token"].strip()
        return super().save(commit=commit)


class BroadcastForm(forms.Form):
    text = forms.CharField(
        label=_("Message"),
        widget=forms.Textarea(attrs={"rows": 6, "cols": 80}),
        help_text=_("Plain text, sent to everyone who has talked to the bot and has not blocked it."),
    )


@admin.register(Bot)
class BotAdmin(admin.ModelAdmin):
    form = BotForm
    list_display = ["name", "token_hint", "telegram_username", "enabled", "default_persona", "access_policy"]
    list_filter = ["enabled", "access_policy"]
    list_select_related = ["default_persona"]
    readonly_fields = ["token_hint", "telegram_username"]
    actions = ["check_token", "send_broadcast"]

    def has_broadcast_permission(self, request: HttpRequest) -> bool:
        """A broadcast is a new Broadcast row: whoever may add one may send one, to the bots they can see."""
        opts = Broadcast._meta
        return request.user.has_perm(f"{opts.app_label}.{get_permission_codename('add', opts)}")

    # It stores the username Telegram reports, so it changes the bot.
    @admin.action(description=_("Check the token with Telegram (getMe)"), permissions=["change"])
    def check_token(self, request: HttpRequest, queryset: QuerySet[Bot]) -> None:
        for bot in queryset:
            try:
                username = bot_token_check(bot=bot)
            except TokenCheckError as exc:
                self.message_user(request, str(exc), messages.ERROR)
            else:
                self.message_user(
                    request,
                    _("The token of bot “%(bot)s” works: Telegram says it is @%(username)s.")
                    % {"bot": bot, "username": username},
                    messages.SUCCESS,
                )

    @admin.action(description=_("Send a broadcast to the bot's users"), permissions=["broadcast"])
    def send_broadcast(self, request: HttpRequest, queryset: QuerySet[Bot]) -> TemplateResponse | None:
        form = BroadcastForm(request.POST if "send" in request.POST else None)
        if form.is_bound and form.is_valid():
            for bot in queryset:
                try:
                    broadcast = broadcast_create(bot=bot, text=form.cleaned_data["text"], created_by=request.user)
                except BroadcastError as exc:
                    form.add_error("text", str(exc))
                    break
                self.message_user(
                    request,
                    _("Broadcast %(id)s to the users of “%(bot)s” is queued; its progress is under Broadcasts.")
                    % {"id": broadcast.pk, "bot": bot},
                    messages.SUCCESS,
                )
            else:
                return None
        context = {
            **self.admin_site.each_context(request),
            "title": _("Send a broadcast"),
            "opts": self.model._meta,
            "form": form,
            "bots": list(queryset),
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
            "action": "send_broadcast",
            "back": "admin:botapp_bot_changelist",
        }
        return TemplateResponse(request, "admin/botapp/broadcast/add.html", context)


class BroadcastCreateForm(BroadcastForm):
    bot = forms.ModelChoiceField(label=_("Bot"), queryset=Bot.objects.filter(enabled=True), empty_label=None)
    field_order = ["bot", "text"]


@admin.register(Broadcast)
class BroadcastAdmin(ReadOnlyAdmin):
    list_display = ["id", "bot", "short_text", "state", "sent_count", "failed_count", "blocked_count", "created_at"]
    list_filter = ["state", "bot"]
    list_select_related = ["bot"]
    fields = [
        "bot",
        "text",
        "created_by",
        "state",
        "sent_count",
        "failed_count",
        "blocked_count",
        "created_at",
        "finished_at",
    ]

    @admin.display(description=_("text"))
    def short_text(self, obj: Broadcast) -> str:
        return Truncator(obj.text).chars(60)

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return request.user.has_perm("botapp.add_broadcast")

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context: dict | None = None) -> HttpResponse:
        """Write a broadcast and queue it (the same service as the bots' action)."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = BroadcastCreateForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                broadcast = broadcast_create(
                    bot=form.cleaned_data["bot"], text=form.cleaned_data["text"], created_by=request.user
                )
            except BroadcastError as exc:
                form.add_error("text", str(exc))
            else:
                self.message_user(
                    request,
                    _("Broadcast %(id)s to the users of “%(bot)s” is queued; its progress is below.")
                    % {"id": broadcast.pk, "bot": broadcast.bot},
                    messages.SUCCESS,
                )
                return redirect("admin:botapp_broadcast_changelist")
        context = {
            **self.admin_site.each_context(request),
            "title": _("Send a broadcast"),
            "opts": self.model._meta,
            "form": form,
            "back": "admin:botapp_broadcast_changelist",
        }
        return TemplateResponse(request, "admin/botapp/broadcast/add.html", context)


@admin.register(BotUser)
class BotUserAdmin(ReadOnlyAdmin):
    list_display = ["identity", "bot", "first_seen", "blocked_bot_at"]
    list_filter = ["bot", ("blocked_bot_at", admin.EmptyFieldListFilter)]
    list_select_related = ["identity", "bot"]
    search_fields = ["identity__username", "=identity__telegram_id"]


class InvitationForm(forms.ModelForm):
    class Meta:
        model = Invitation
        fields = ["note", "email", "expires_at"]


@admin.register(Invitation)
class InvitationAdmin(admin.ModelAdmin):
    """Invite people by link: the link is shown once, when the invitation is made (only a digest is kept)."""

    form = InvitationForm
    list_display = ["__str__", "email", "state", "created_by", "created_at", "expires_at", "used_by"]
    list_select_related = ["created_by", "used_by"]
    search_fields = ["note", "email", "used_by__username"]
    readonly_fields = ["created_by", "created_at", "used_at", "used_by"]

    def get_changeform_initial_data(self, request: HttpRequest) -> dict:
        return {"expires_at": timezone.now() + INVITATION_LIFETIME}

    def get_readonly_fields(self, request: HttpRequest, obj: Invitation | None = None) -> list[str]:
        # Once made, an invitation is what it is: only its reminder note may change.
        return [*self.readonly_fields, "email", "expires_at"] if obj is not None else []

    @admin.display(description=_("state"))
    def state(self, obj: Invitation) -> str:
        state = {"used": _("used"), "expired": _("expired"), "open": pgettext_lazy("invitation", "open")}
        return state[invitation_state(obj)]

    def save_model(self, request: HttpRequest, obj: Invitation, form: forms.Form, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        url = invitation_issue(invitation=obj, created_by=request.user)
        self.message_user(
            request,
            _("Send this link to the person you invite; it is shown only now and works once: %(url)s") % {"url": url},
            messages.WARNING,
        )


# --- Personas and prices ------------------------------------------------------------------------


@admin.register(Persona)
class PersonaAdmin(admin.ModelAdmin):
    list_display = ["name", "model", "temperature", "max_output_tokens", "is_active", "is_default"]
    list_filter = ["is_active", "is_default"]
    search_fields = ["name", "model"]
    filter_horizontal = ["tools"]


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    list_display = [
        "model",
        "input_per_mtok",
        "cached_input_per_mtok",
        "output_per_mtok",
        "audio_per_minute",
        "image_output_per_mtok",
        "per_mchars",
        "offered",
        "valid_from",
    ]
    list_editable = ["offered"]
    list_filter = ["offered"]
    readonly_fields = ["picture_prices"]
    search_fields = ["model"]
    # A price change is best a new row from a new date: the ledger keeps the prices it used either way.
    save_as = True

    @admin.display(description=_("prices per picture"))
    def picture_prices(self, obj: ModelPrice) -> str:
        """Image models billed per picture (dall-e) have a price per size and quality, edited on their own page."""
        rows = list(obj.image_prices.all()) if obj.pk else []
        listing = ", ".join(str(row) for row in rows) or _("none (the model is billed by tokens or characters)")
        url = reverse("admin:botapp_modelimageprice_changelist") + (f"?price__id__exact={obj.pk}" if obj.pk else "")
        return format_html('{} · <a href="{}">{}</a>', listing, url, _("edit"))


@admin.register(ModelImagePrice)
class ModelImagePriceAdmin(admin.ModelAdmin):
    list_display = ["price", "size", "quality", "usd_per_image"]
    list_filter = ["price__model"]
    list_select_related = ["price"]
    search_fields = ["price__model", "size"]


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
        response = HttpResponse(body, content_type="text/markdown; charset=utf-8")
        response["Content-Disposition"] = 'attachment; filename="conversations.md"'
        return response

    @admin.action(description=_("Export the selected conversations as JSON"))
    def export_json(self, request: HttpRequest, queryset: QuerySet[Conversation]) -> HttpResponse:
        body = conversations_export_json(ids=queryset.values_list("pk", flat=True))
        response = HttpResponse(body, content_type="application/json; charset=utf-8")
        response["Content-Disposition"] = 'attachment; filename="conversations.json"'
        return response


@admin.register(Message)
class MessageAdmin(ReadOnlyAdmin):
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

    @admin.display(description=_("conversation"))
    def conversation_link(self, obj: Message) -> str:
        url = reverse("admin:botapp_conversation_change", args=[obj.conversation_id])
        return format_html('<a href="{}">{}</a>', url, obj.conversation)

    @admin.display(description=_("content"))
    def short_content(self, obj: Message) -> str:
        return Truncator(obj.content or obj.error).chars(80)


@admin.register(MediaFile)
class MediaFileAdmin(ReadOnlyAdmin):
    list_display = ["id", "kind", "conversation_link", "model", "size_bytes", "dimensions", "created_at", "open_file"]
    list_filter = ["kind", "model"]
    list_select_related = ["conversation"]
    search_fields = ["prompt", "=conversation__id"]
    ordering = ["-id"]

    @admin.display(description=_("conversation"))
    def conversation_link(self, obj: MediaFile) -> str:
        url = reverse("admin:botapp_conversation_change", args=[obj.conversation_id])
        return format_html('<a href="{}">{}</a>', url, obj.conversation)

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


# Tools, MCP servers and tool calls have their admin beside their code.
from botapp.tools import admin as _tools_admin  # noqa: E402, F401

# --- Background tasks (django-q2) ---------------------------------------------------------------

# django-q2's "resubmit" runs the task's code again (and deletes a failure): not for staff who may only look.
admin.site.unregister(Success)
admin.site.unregister(Failure)


@admin.register(Success)
class SuccessfulTaskAdmin(django_q_admin.TaskAdmin):
    actions = ["resubmit_task"]

    @admin.action(description=django_q_admin.resubmit_task.short_description, permissions=["change"])
    def resubmit_task(self, request: HttpRequest, queryset: QuerySet) -> None:
        django_q_admin.resubmit_task(self, request, queryset)


@admin.register(Failure)
class FailedTaskAdmin(django_q_admin.FailAdmin):
    actions = ["resubmit_task"]

    @admin.action(description=django_q_admin.resubmit_task.short_description, permissions=["change", "delete"])
    def resubmit_task(self, request: HttpRequest, queryset: QuerySet) -> None:
        django_q_admin.resubmit_task(self, request, queryset)
