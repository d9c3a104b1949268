"""Bots: tokens checked with Telegram, broadcasts to a bot's people, who has talked to which bot."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_permission_codename
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.utils.text import Truncator
from django.utils.translation import gettext_lazy as _

from botapp.admin.base import ReadOnlyAdmin
from botapp.broadcast import BroadcastError, broadcast_create
from botapp.models import Bot, BotUser, Broadcast
from botapp.staff import TokenCheckError, bot_token_check

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
