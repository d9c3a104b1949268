"""People: users with their access, budget and Telegram account, groups, identities and invitations."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.formats import number_format
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext, pgettext_lazy

from botapp.accounts import INVITATION_LIFETIME, invitation_issue, invitation_state
from botapp.admin.base import EstimatedCountPaginator, LargeTableAdmin, money
from botapp.models import Invitation, Profile, TelegramIdentity
from botapp.selectors import users_with_month_totals
from botapp.staff import profiles_set_blocked
from botapp.usage import format_usd, profile_for

User = get_user_model()


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
