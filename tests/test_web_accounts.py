"""Accounts without an admin in the loop: /web sign-in links, invitations, sign-up, the account page, passwords."""

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from botapp.accounts import invitation_issue
from botapp.crypto import token_digest
from botapp.linking import web_sign_in_link_create
from botapp.models import Channel, Conversation, Invitation, Profile, WebSignInLink
from botapp.people import telegram_identity_sync
from tests.factories import BotFactory, ConversationFactory, UserFactory

pytestmark = pytest.mark.django_db
PASSWORD = "correct horse battery staple"
NEW_PASSWORD = "a much longer new passphrase 42"


def path_of(url: str) -> str:
    """The path of an absolute link (SITE_URL or the local default), for the test client."""
    return "/" + url.split("://", 1)[1].split("/", 1)[1]


@pytest.fixture
def identity():
    identity = telegram_identity_sync(telegram_id=4242, username="ada_tg", first_name="Ada")
    ConversationFactory(user=identity.user, channel=Channel.TELEGRAM, bot=BotFactory(), telegram_chat_id=4242,
                        title="From Telegram")  # fmt: skip
    return identity


def test_a_sign_in_link_is_shown_first_used_once_and_never_stored(identity, settings):
    """Opening the link (as a link preview would) uses nothing; the button signs the Telegram person in, to their own
    account with their Telegram conversations; the link then works no more. Only its digest is stored."""
    settings.SITE_URL = "https://jarvis.example"
    url = web_sign_in_link_create(identity=identity)
    assert url.startswith("https://jarvis.example/accounts/telegram/")
    token = url.rstrip("/").rsplit("/", 1)[1]
    assert WebSignInLink.objects.get().token_digest == token_digest(token) != token
    client = Client()
    for _ in range(2):
        shown = client.get(path_of(url))
        assert shown.status_code == 200 and "@ada_tg" in shown.content.decode()
    assert "Content-Security-Policy" in shown.headers
    assert client.get(reverse("web:home")).status_code == 302
    signed_in = client.post(path_of(url), {"action": "sign_in"})
    assert signed_in["Location"] == reverse("web:home")
    home = client.get(reverse("web:home")).content.decode()
    assert "From Telegram" in home
    assert client.get(reverse("web:home")).wsgi_request.user == identity.user
    again = Client().post(path_of(url), {"action": "sign_in"})
    assert again.status_code == 410 and "expired or was already used" in again.content.decode()


def test_an_expired_or_replaced_link_is_refused(identity):
    """A link past its ten minutes is refused; asking /web again makes the earlier unused link stop working."""
    first = web_sign_in_link_create(identity=identity)
    second = web_sign_in_link_create(identity=identity)
    assert Client().post(path_of(first)).status_code == 410
    WebSignInLink.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    refused = Client().post(path_of(second))
    assert refused.status_code == 410 and "/web" in refused.content.decode()
    assert WebSignInLink.objects.filter(used_at__isnull=False).count() == 0


def test_links_never_sign_in_admins_or_blocked_people(identity):
    """A staff account signs in with its password only; a blocked person is refused too."""
    identity.user.is_staff = True
    identity.user.save()
    url = web_sign_in_link_create(identity=identity)
    refused = Client().post(path_of(url))
    assert refused.status_code == 410 and "admin rights" in refused.content.decode()
    identity.user.is_staff = False
    identity.user.save()
    Profile.objects.filter(user=identity.user).update(is_blocked=True)
    assert Client().post(path_of(url)).status_code == 410


def test_a_signed_in_person_may_link_the_telegram_account_instead(identity):
    """Signed in with a web account, the link offers to join the Telegram account to it: its conversations move."""
    web_user = UserFactory(username="ada_web")
    client = Client()
    client.force_login(web_user)
    url = web_sign_in_link_create(identity=identity)
    assert "Link to ada_web" in client.get(path_of(url)).content.decode()
    client.post(path_of(url), {"action": "link"})
    identity.refresh_from_db()
    assert identity.user == web_user
    assert Conversation.objects.get(title="From Telegram").user == web_user
    assert client.get(reverse("web:home")).wsgi_request.user == web_user


def test_an_account_made_from_telegram_sets_a_password_and_then_signs_in_with_it(identity):
    """The account page of a Telegram-made account sets a password; the username can be changed too."""
    client = Client()
    client.post(path_of(web_sign_in_link_create(identity=identity)))
    page = client.get(reverse("web:account")).content.decode()
    assert "no password yet" in page
    client.post(reverse("web:account"), {"details": "1", "username": "ada", "email": "ada@example.com"})
    client.post(reverse("web:account"), {"password": "1", "new_password1": PASSWORD, "new_password2": PASSWORD})
    assert client.get(reverse("web:home")).status_code == 200  # still signed in after the password change
    fresh = Client()
    fresh.post(reverse("login"), {"username": "ada", "password": PASSWORD})
    assert fresh.get(reverse("web:home")).wsgi_request.user == identity.user
    assert "Change your password" in fresh.get(reverse("web:account")).content.decode()


def test_password_change_and_reset_by_email(mailoutbox):
    """A signed-in person changes their password; a forgotten one is reset with a one-time link sent by email."""
    person = UserFactory(username="grace", email="grace@example.com")
    client = Client()
    client.force_login(person)
    changed = client.post(
        reverse("password_change"),
        {"old_password": PASSWORD, "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD},
    )
    assert changed["Location"] == reverse("password_change_done")
    anonymous = Client()
    assert anonymous.post(reverse("password_reset"), {"email": "grace@example.com"})["Location"] == reverse(
        "password_reset_done"
    )
    [mail] = mailoutbox
    assert mail.subject == "Reset your Jarvis password" and "grace" in mail.body
    link = next(line for line in mail.body.splitlines() if "/accounts/password/reset/" in line)
    form = anonymous.get(path_of(link), follow=True)
    assert b"new_password1" in form.content
    done = anonymous.post(form.redirect_chain[-1][0], {"new_password1": PASSWORD, "new_password2": PASSWORD})
    assert done["Location"] == reverse("password_reset_complete")
    assert Client().login(username="grace", password=PASSWORD)
    reused = anonymous.get(path_of(link), follow=True)
    assert "expired or was already used" in reused.content.decode()
    # An unknown address gets the same answer and no email: nobody learns who has an account.
    anonymous.post(reverse("password_reset"), {"email": "nobody@example.com"})
    assert len(mailoutbox) == 1


def test_an_invitation_makes_one_account(settings):
    """An admin's invitation link opens a sign-up form (email filled in); it makes one account, then is used up."""
    settings.SITE_URL = "https://jarvis.example"
    admin = UserFactory(username="boss", is_staff=True)
    invitation = Invitation(note="Linus", email="linus@example.com", expires_at=timezone.now() + timedelta(days=7))
    url = invitation_issue(invitation=invitation, created_by=admin)
    assert url.startswith("https://jarvis.example/accounts/invite/")
    client = Client()
    assert "linus@example.com" in client.get(path_of(url)).content.decode()
    weak = client.post(path_of(url), {"username": "linus", "email": "", "password1": "123", "password2": "123"})
    assert weak.status_code == 200 and not get_user_model().objects.filter(username="linus").exists()
    created = client.post(
        path_of(url), {"username": "linus", "email": "linus@example.com", "password1": PASSWORD, "password2": PASSWORD}
    )
    assert created["Location"] == reverse("web:home")
    linus = get_user_model().objects.get(username="linus")
    assert Profile.objects.filter(user=linus).exists() and not linus.is_staff
    invitation.refresh_from_db()
    assert invitation.used_by == linus and invitation.created_by == admin
    assert Client().get(path_of(url)).status_code == 410
    expired = Invitation(expires_at=timezone.now() - timedelta(minutes=1))
    assert Client().get(path_of(invitation_issue(invitation=expired, created_by=admin))).status_code == 410


def test_sign_up_is_closed_unless_switched_on(settings):
    """Self sign-up is off by default (the page says how else to get in); SIGNUP_OPEN lets anyone make an account."""
    closed = Client().get(reverse("web:signup"))
    assert closed.status_code == 404 and "/web" in closed.content.decode()
    assert "Create an account" not in Client().get(reverse("login")).content.decode()
    settings.SIGNUP_OPEN = True
    assert "Create an account" in Client().get(reverse("login")).content.decode()
    client = Client()
    response = client.post(
        reverse("web:signup"), {"username": "newbie", "email": "", "password1": PASSWORD, "password2": PASSWORD}
    )
    assert response["Location"] == reverse("web:home")
    assert client.get(reverse("web:home")).wsgi_request.user.username == "newbie"
