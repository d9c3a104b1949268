"""Admin privileges: actions need their permission, only superusers grant power, the ledger stays, CSV is text."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from decimal import Decimal
from html.parser import HTMLParser

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.db import models
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django_q.models import Failure, Task

from botapp import tasks
from botapp.models import (
    BotUser,
    Broadcast,
    Channel,
    Conversation,
    Message,
    ModelPrice,
    Profile,
    Role,
    TelegramIdentity,
    UsageKind,
    UsageRecord,
)
from botapp.usage import usage_record_create
from tests.admin_support import (  # noqa: F401  (fixtures)
    ADMIN_TOKEN,
    admin_telegram_server_fixture,
    fake_telegram_fixture,
    fast_passwords_fixture,
    staff_client_fixture,
)
from tests.factories import BotFactory, ConversationFactory, UserFactory

pytestmark = pytest.mark.usefixtures("fast_passwords")

User = get_user_model()
USERS = "admin:auth_user_changelist"
BOTS = "admin:botapp_bot_changelist"


def staff_with(*codenames: str, username: str = "clerk") -> Client:
    """A client signed in as a staff member (not a superuser) holding exactly these permissions."""
    person = UserFactory(username=username, is_staff=True)
    for codename in codenames:
        app_label, name = codename.split(".")
        person.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=name))
    client = Client()
    client.force_login(person)
    client.user = person
    return client


class _FormReader(HTMLParser):
    """What a browser would submit from the page's main form: inputs, checked boxes, selected options, textareas."""

    def __init__(self) -> None:
        super().__init__()
        self.data: dict[str, list[str]] = {}
        self._select: str | None = None
        self._textarea: str | None = None

    def _add(self, name: str, value: str) -> None:
        self.data.setdefault(name, []).append(value)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {key: value or "" for key, value in attrs}
        name = a.get("name")
        if tag == "input" and name and "disabled" not in a:
            kind = a.get("type", "text")
            if kind in ("checkbox", "radio"):
                if "checked" in a:
                    self._add(name, a.get("value", "on"))
            elif kind not in ("submit", "button", "file"):
                self._add(name, a.get("value", ""))
        elif tag == "select" and name:
            self._select = name
        elif tag == "option" and self._select and "selected" in a:
            self._add(self._select, a.get("value", ""))
        elif tag == "textarea" and name:
            self._textarea = name
            self._add(name, "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None
        elif tag == "textarea":
            self._textarea = None

    def handle_data(self, data: str) -> None:
        if self._textarea:
            self.data[self._textarea][-1] += data


def form_of(html: str) -> dict[str, list[str]]:
    reader = _FormReader()
    reader.feed(html)
    return reader.data


def offered_actions(client: Client, url: str) -> set[str]:
    """The actions the changelist's action menu offers."""
    html = client.get(url).content.decode()
    start = html.find('name="action"')
    return set() if start < 0 else set(_option_values(html[start : html.find("</select>", start)]))


def _option_values(fragment: str) -> list[str]:
    values = []
    for part in fragment.split("<option")[1:]:
        value = part.split('value="', 1)[1].split('"', 1)[0]
        if value:
            values.append(value)
    return values


@pytest.fixture
def boss(db) -> User:
    return UserFactory(username="boss", is_staff=True, is_superuser=True)


# --- Actions need the permission of what they change --------------------------------------------


def test_view_only_staff_cannot_check_tokens_broadcast_or_block(fake_telegram, boss) -> None:
    """Staff with only view_bot and view_user are offered no changing action, and posting one changes nothing."""
    viewer = staff_with("botapp.view_bot", "auth.view_user")
    bot = BotFactory(name="helper", token=ADMIN_TOKEN)
    identity = TelegramIdentity.objects.create(user=UserFactory(username="fan"), telegram_id=9001)
    BotUser.objects.create(bot=bot, identity=identity)

    assert offered_actions(viewer, reverse(BOTS)) == set()
    assert not {"block", "unblock"} & offered_actions(viewer, reverse(USERS))
    for action in ("check_token", "send_broadcast"):
        viewer.post(reverse(BOTS), {"action": action, "_selected_action": [bot.pk], "send": "1", "text": "Spam!"})
    everyone = list(User.objects.values_list("pk", flat=True))
    viewer.post(reverse(USERS), {"action": "block", "_selected_action": everyone})

    assert fake_telegram.calls("getMe") == []
    assert not Broadcast.objects.exists()
    assert not Profile.objects.filter(is_blocked=True).exists()


def test_each_action_runs_with_its_own_permission(fake_telegram, boss) -> None:
    """change_bot checks a token, add_broadcast sends a broadcast, change_user blocks: each alone suffices."""
    bot = BotFactory(name="helper", token=ADMIN_TOKEN)
    checker = staff_with("botapp.view_bot", "botapp.change_bot", username="checker")
    assert "check_token" in offered_actions(checker, reverse(BOTS))
    assert "send_broadcast" not in offered_actions(checker, reverse(BOTS))
    checker.post(reverse(BOTS), {"action": "check_token", "_selected_action": [bot.pk]})
    assert [call.token for call in fake_telegram.calls("getMe")] == [ADMIN_TOKEN]

    caster = staff_with("botapp.view_bot", "botapp.add_broadcast", username="caster")
    assert offered_actions(caster, reverse(BOTS)) == {"send_broadcast"}
    caster.post(reverse(BOTS), {"action": "send_broadcast", "_selected_action": [bot.pk], "send": "1", "text": "Hi"})
    assert Broadcast.objects.get().created_by == caster.user

    keeper = staff_with("auth.view_user", "auth.change_user", username="keeper")
    fan = UserFactory(username="fan")
    assert {"block", "unblock"} <= offered_actions(keeper, reverse(USERS))
    keeper.post(reverse(USERS), {"action": "block", "_selected_action": [fan.pk]})
    assert Profile.objects.get(user=fan).is_blocked


def test_failed_tasks_are_resubmitted_only_with_the_change_permission(db, boss) -> None:
    """django-q2's "resubmit" queues code again and deletes the failure: view-only staff do not get it."""
    failure = Task.objects.create(
        id="f" * 32, name="broken", func="botapp.tasks.spend_report_send", started=timezone.now(),
        stopped=timezone.now(), success=False, result="boom",
    )  # fmt: skip
    url = reverse("admin:django_q_failure_changelist")
    viewer = staff_with("django_q.view_failure", username="viewer")
    assert "resubmit_task" not in offered_actions(viewer, url)
    viewer.post(url, {"action": "resubmit_task", "_selected_action": [failure.pk]})
    assert Failure.objects.filter(pk=failure.pk).exists()

    operator = staff_with("django_q.view_failure", "django_q.change_failure", "django_q.delete_failure")
    assert "resubmit_task" in offered_actions(operator, url)


# --- Only superusers grant power ----------------------------------------------------------------


def test_staff_who_may_change_users_cannot_make_themselves_superuser(boss) -> None:
    """is_superuser, groups and permissions are read-only for staff; posting them anyway changes nothing."""
    clerk = staff_with("auth.view_user", "auth.change_user")
    admins = Group.objects.create(name="admins")
    admins.permissions.set(Permission.objects.all())
    url = reverse("admin:auth_user_change", args=[clerk.user.pk])
    page = clerk.get(url).content.decode()
    form = form_of(page)
    for field in ("is_superuser", "groups", "user_permissions"):
        assert field not in form, field
    form.update(
        is_superuser=["on"],
        groups=[str(admins.pk)],
        user_permissions=[str(pk) for pk in Permission.objects.values_list("pk", flat=True)],
        first_name=["Clerk"],
    )
    response = clerk.post(url, form)
    assert response.status_code == 302, response.content.decode()[:2000]
    clerk.user.refresh_from_db()
    assert clerk.user.first_name == "Clerk", "the clerk may still edit their ordinary fields"
    assert not clerk.user.is_superuser
    assert not clerk.user.groups.exists()
    assert sorted(clerk.user.user_permissions.values_list("codename", flat=True)) == ["change_user", "view_user"]


def test_staff_who_may_change_groups_cannot_widen_what_a_group_grants(boss) -> None:
    """A group's permissions are read-only to staff, so no one promotes their own group; renaming still works."""
    clerk = staff_with("auth.view_group", "auth.change_group")
    clerks = Group.objects.create(name="clerks")
    clerk.user.groups.add(clerks)
    url = reverse("admin:auth_group_change", args=[clerks.pk])
    form = form_of(clerk.get(url).content.decode())
    assert "permissions" not in form
    form.update(name=["desk"], permissions=[str(pk) for pk in Permission.objects.values_list("pk", flat=True)])
    assert clerk.post(url, form).status_code == 302
    clerks.refresh_from_db()
    assert (clerks.name, clerks.permissions.count()) == ("desk", 0)


def test_staff_cannot_edit_block_or_delete_a_superuser(boss) -> None:
    """A superuser's page is read-only to other staff: no save, no password change, no block, no delete."""
    clerk = staff_with("auth.view_user", "auth.change_user", "auth.delete_user")
    page = clerk.get(reverse("admin:auth_user_change", args=[boss.pk]))
    assert page.status_code == 200
    assert 'name="_save"' not in page.content.decode()
    response = clerk.post(reverse("admin:auth_user_change", args=[boss.pk]), {"username": "owned", "is_active": ""})
    assert response.status_code == 403
    password = reverse("admin:auth_user_password_change", args=[boss.pk])
    assert clerk.post(password, {"password1": "Owned-12345!", "password2": "Owned-12345!"}).status_code == 403
    response = clerk.post(reverse(USERS), {"action": "block", "_selected_action": [boss.pk]}, follow=True)
    assert "Only a superuser can block or unblock a superuser" in response.content.decode()
    response = clerk.post(
        reverse(USERS), {"action": "delete_selected", "_selected_action": [boss.pk], "post": "yes"}, follow=True
    )
    boss.refresh_from_db()
    assert (boss.username, boss.is_active, boss.check_password("correct horse battery staple")) == ("boss", True, True)
    assert not Profile.objects.filter(user=boss, is_blocked=True).exists()
    assert User.objects.filter(pk=boss.pk).exists()

    identity = TelegramIdentity.objects.create(user=boss, telegram_id=1001, username="boss_tg")
    mover = staff_with("botapp.view_telegramidentity", "botapp.change_telegramidentity", username="mover")
    url = reverse("admin:botapp_telegramidentity_change", args=[identity.pk])
    assert mover.post(url, {"telegram_id": 1001, "username": "boss_tg", "user": mover.user.pk}).status_code == 403
    identity.refresh_from_db()
    assert identity.user == boss


def test_a_superuser_still_grants_superuser_status(staff_client) -> None:
    """The restriction is for staff only: a superuser edits is_superuser and groups of others as before."""
    clerk = UserFactory(username="clerk", is_staff=True)
    admins = Group.objects.create(name="admins")
    url = reverse("admin:auth_user_change", args=[clerk.pk])
    page = staff_client.get(url).content.decode()
    assert 'name="is_superuser"' in page
    assert 'name="groups"' in page
    form = form_of(page)
    form.update(is_superuser=["on"], groups=[str(admins.pk)])
    assert staff_client.post(url, form).status_code == 302
    clerk.refresh_from_db()
    assert clerk.is_superuser
    assert list(clerk.groups.all()) == [admins]


# --- The ledger is append-only, deletes included ------------------------------------------------


def charge(conversation: Conversation, message: Message | None = None, cost_tokens: int = 1000) -> UsageRecord:
    return usage_record_create(
        user=conversation.user,
        kind=UsageKind.CHAT,
        model="gpt-4o-mini",
        channel=conversation.channel,
        conversation=conversation,
        message=message,
        bot=conversation.bot,
        input_tokens=cost_tokens,
        output_tokens=cost_tokens,
    )


def test_deleting_ledger_rows_through_a_queryset_is_refused(db) -> None:
    """all().delete(), filter().delete(), a related manager's delete or clear, and _raw_delete all refuse."""
    conversation = ConversationFactory()
    charge(conversation)
    charge(conversation)
    attempts = [
        lambda: UsageRecord.objects.all().delete(),
        lambda: UsageRecord.objects.filter(kind=UsageKind.CHAT).delete(),
        lambda: conversation.user.usage_records.all().delete(),
        lambda: conversation.user.usage_records.clear(),
        lambda: UsageRecord.objects.all()._raw_delete(UsageRecord.objects.db),
        lambda: UsageRecord.objects.first().delete(),
    ]
    for attempt in attempts:
        with pytest.raises(TypeError, match="append-only"):
            attempt()
    assert UsageRecord.objects.filter(user=conversation.user).count() == 2


def test_every_relation_of_the_ledger_keeps_its_rows_when_the_target_goes() -> None:
    """Each foreign key of UsageRecord is SET_NULL, so no delete cascades into the ledger; what points at a ledger
    row (a generated picture's charge) lets go of it rather than depend on it."""
    for field in UsageRecord._meta.get_fields():
        if field.is_relation and field.many_to_one:
            assert field.remote_field.on_delete is models.SET_NULL, field.name
        elif field.is_relation and field.auto_created:
            assert field.on_delete is models.SET_NULL, f"{field} would tie its rows to the ledger's"


def test_deleting_people_conversations_bots_and_prices_keeps_the_ledger(db, settings) -> None:
    """Every delete that touches ledger rows unlinks them; the rows and their costs stay, retention included."""
    bot = BotFactory(name="gone")
    conversation = ConversationFactory(channel=Channel.TELEGRAM, bot=bot)
    message = Message.objects.create(conversation=conversation, role=Role.ASSISTANT, content="hi")
    charge(conversation, message)
    other = ConversationFactory()
    charge(other)
    old = ConversationFactory()
    Message.objects.create(conversation=old, role=Role.USER, content="old", created_at=timezone.now() - timedelta(99))
    Conversation.objects.filter(pk=old.pk).update(updated_at=timezone.now() - timedelta(days=99))
    charge(old)
    before = sorted(UsageRecord.objects.values_list("cost_usd", flat=True))
    assert sum(before) > Decimal("0")

    settings.RETENTION_DAYS, settings.RETENTION_MODE = 30, "delete"
    tasks.messages_retention()
    assert not Conversation.objects.filter(pk=old.pk).exists()
    message.delete()
    conversation.delete()
    bot.delete()
    other.user.delete()
    ModelPrice.objects.filter(model="gpt-4o-mini").delete()

    assert sorted(UsageRecord.objects.values_list("cost_usd", flat=True)) == before
    assert not UsageRecord.objects.filter(conversation__isnull=False).exists()
    assert UsageRecord.objects.filter(user__isnull=True).count() == 1


# --- The ledger export is data, not formulas ----------------------------------------------------


def test_ledger_csv_writes_formula_like_cells_as_text(staff_client) -> None:
    """Cells starting with = + - @ tab or CR get a leading quote; numbers stay numbers."""
    hostile = {
        "username": '=HYPERLINK("http://evil.example","click")',
        "bot": "+cmd|' /C calc'!A0",
        "model": "@SUM(1+1)*cmd|' /C calc'!A0",
    }
    person = UserFactory(username=hostile["username"])
    bot = BotFactory(name=hostile["bot"])
    for name in (hostile["model"], "-2+3", "\tTAB", "\rCR", "plain-model"):
        ModelPrice.objects.create(model=name, input_per_mtok=Decimal("1"), output_per_mtok=Decimal("2"))
    conversation = ConversationFactory(user=person, channel=Channel.TELEGRAM, bot=bot)
    for model in (hostile["model"], "-2+3", "\tTAB", "\rCR", "plain-model"):
        usage_record_create(
            user=person, kind=UsageKind.CHAT, model=model, channel=Channel.TELEGRAM, conversation=conversation,
            bot=bot, input_tokens=1500, output_tokens=300,
        )  # fmt: skip
    response = staff_client.get(reverse("admin:botapp_usage_ledger_csv"))
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert len(rows) == 5
    for row in rows:
        assert row["username"] == "'" + hostile["username"]
        assert row["bot"] == "'" + hostile["bot"]
        assert row["input_tokens"] == "1500"
        assert row["output_tokens"] == "300"
        assert Decimal(row["cost_usd"]) > 0
        for value in row.values():
            assert not value.startswith(("=", "+", "-", "@", "\t", "\r")), value
    assert [row["model"] for row in rows] == [
        "'" + hostile["model"],
        "'-2+3",
        "'\tTAB",
        "'\rCR",
        "plain-model",
    ]


def test_the_form_reader_submits_what_a_browser_would() -> None:
    """The helper these tests post admin forms with: checked boxes, selected options, textareas, no buttons."""
    data = form_of(
        '<input name="a" value="1"><input type="checkbox" name="b" checked>'
        '<input type="checkbox" name="c"><select name="d" multiple><option value="x" selected>'
        '<option value="y"></select><textarea name="e">hi</textarea><input type="submit" name="_save">'
    )
    assert data == {"a": ["1"], "b": ["on"], "d": ["x"], "e": ["hi"]}
