"""Django admin for Jarvis: a simple, read-mostly view of the data (the full admin comes later)."""

from django import forms
from django.contrib import admin

from botapp.models import (
    Bot,
    Conversation,
    Message,
    ModelPrice,
    Persona,
    Profile,
    TelegramIdentity,
    UsageRecord,
)


class BotForm(forms.ModelForm):
    new_token = forms.CharField(
        label="Token",
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="Leave empty to keep the current token. It is stored encrypted and never shown in full.",
    )

    class Meta:
        model = Bot
        fields = ["name", "new_token", "enabled", "default_persona", "access_policy", "allowed_users"]

    def clean(self) -> dict:
        cleaned = super().clean()
        if not self.instance.token_encrypted and not cleaned.get("new_token"):
            self.add_error("new_token", "A new bot needs its token from @BotFather.")
        return cleaned

    def save(self, commit: bool = True) -> Bot:
        if self.cleaned_data.get("new_token"):
            self.instance.token = self.cleaned_data["new_token"].strip()
        return super().save(commit=commit)


@admin.register(Bot)
class BotAdmin(admin.ModelAdmin):
    form = BotForm
    list_display = ["name", "token_hint", "telegram_username", "enabled", "default_persona", "access_policy"]
    readonly_fields = ["token_hint", "telegram_username"]


@admin.register(Persona)
class PersonaAdmin(admin.ModelAdmin):
    list_display = ["name", "model", "temperature", "max_output_tokens", "is_active"]


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    list_display = [
        "model",
        "input_per_mtok",
        "cached_input_per_mtok",
        "output_per_mtok",
        "audio_per_minute",
        "valid_from",
    ]
    list_filter = ["model"]


@admin.register(Profile)
class ProfileAdmin(admin.ModelAdmin):
    list_display = ["user", "is_blocked", "daily_budget_usd", "monthly_budget_usd", "unlimited_budget"]
    list_select_related = ["user"]
    raw_id_fields = ["user"]


@admin.register(TelegramIdentity)
class TelegramIdentityAdmin(admin.ModelAdmin):
    list_display = ["telegram_id", "username", "first_name", "language_code", "user", "created_at"]
    list_select_related = ["user"]
    raw_id_fields = ["user"]
    search_fields = ["username", "=telegram_id"]


class MessageInline(admin.TabularInline):
    model = Message
    fields = ["role", "content", "status", "input_tokens", "output_tokens", "created_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ["__str__", "user", "channel", "bot", "persona", "updated_at"]
    list_filter = ["channel"]
    list_select_related = ["user", "bot", "persona"]
    raw_id_fields = ["user"]
    inlines = [MessageInline]


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Message)
class MessageAdmin(ReadOnlyAdmin):
    list_display = ["id", "conversation", "role", "status", "input_tokens", "output_tokens", "created_at"]
    list_filter = ["role", "status"]
    list_select_related = ["conversation"]


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "user", "kind", "model", "input_tokens", "output_tokens", "cost_usd", "status"]
    list_filter = ["kind", "status", "channel"]
    list_select_related = ["user"]
