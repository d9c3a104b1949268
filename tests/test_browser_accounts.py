"""Getting in without an admin, in headless Chromium: the /web sign-in link, an invitation, a reset by email."""

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone
from playwright.sync_api import expect

from botapp.accounts import invitation_issue
from botapp.linking import web_sign_in_link_create
from botapp.models import Channel, Invitation, WebSignInLink
from botapp.people import telegram_identity_sync
from tests.browser_support import (
    OTHER_PAIRS,
    PASSWORD,
    SCREEN_PAIRS,
    eventually,
    open_context,
    screenshot_path,
)
from tests.factories import BotFactory, ConversationFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)
pytest_plugins = ["tests.browser_support"]
NEW_PASSWORD = "a much longer new passphrase 42"


def path_of(url: str) -> str:
    return "/" + url.split("://", 1)[1].split("/", 1)[1]


@pytest.mark.parametrize("screen", SCREEN_PAIRS)
def test_the_link_from_web_signs_a_telegram_person_in_once(browser, asgi_server, screen, tmp_path):
    """The /web link signs the Telegram person in to an account bound to their identity, with their Telegram
    conversations; the same link a second time is refused, and so is an expired one."""
    identity = telegram_identity_sync(telegram_id=7000 + len(screen.name), first_name="Ada", username="ada_tg")
    ConversationFactory(user=identity.user, channel=Channel.TELEGRAM, bot=BotFactory(), telegram_chat_id=7001,
                        title="From my phone")  # fmt: skip
    url = asgi_server.url + path_of(web_sign_in_link_create(identity=identity))
    context = open_context(browser, screen)
    page = context.new_page()
    page.goto(url)
    expect(page.locator("h1")).to_have_text("通过 Telegram 登录" if screen.chinese else "Sign in from Telegram")
    expect(page.locator(".card")).to_contain_text("@ada_tg")
    page.screenshot(path=screenshot_path(tmp_path, f"telegram-sign-in-{screen.name}.png"), scale="css")
    page.click("button[value=sign_in]")
    expect(page.locator("#conversation-list")).to_contain_text("From my phone")
    expect(page.locator(".flash")).to_contain_text("Ada")
    expect(page.locator("#id_text")).to_be_focused()  # once the deferred scripts have run
    page.goto(f"{asgi_server.url}/account/")
    expect(page.locator("input[name=new_password1]")).to_be_visible()
    context.close()

    again = open_context(browser, screen).new_page()
    again.goto(url)
    refusal = "已过期或已被使用" if screen.chinese else "expired or was already used"
    expect(again.locator(".error")).to_contain_text(refusal)
    expect(again.locator("button[value=sign_in]")).to_have_count(0)
    expired = asgi_server.url + path_of(web_sign_in_link_create(identity=identity))
    WebSignInLink.objects.filter(used_at__isnull=True).update(expires_at=timezone.now() - timedelta(seconds=1))
    again.goto(expired)
    expect(again.locator(".error")).to_contain_text(refusal)
    again.context.close()


@pytest.mark.parametrize("screen", OTHER_PAIRS)
def test_an_invitation_link_makes_an_account(browser, asgi_server, screen):
    """An admin's invitation opens a sign-up form; the new person chooses a name and password and is in."""
    invitation = Invitation(note="Linus", email="linus@example.com", expires_at=timezone.now() + timedelta(days=7))
    url = asgi_server.url + path_of(invitation_issue(invitation=invitation, created_by=None))
    page = open_context(browser, screen).new_page()
    page.goto(url)
    expect(page.locator("#id_email")).to_have_value("linus@example.com")
    page.fill("#id_username", f"linus-{screen.name}")
    page.fill("#id_password1", PASSWORD)
    page.fill("#id_password2", PASSWORD)
    page.click("button.primary")
    expect(page.locator("#id_text")).to_be_focused()
    expect(page.locator(".who")).to_have_text(f"linus-{screen.name}")
    assert get_user_model().objects.filter(username=f"linus-{screen.name}").exists()
    page.goto(url)
    expect(page.locator(".error")).to_be_visible()
    page.context.close()


@pytest.mark.parametrize("screen", OTHER_PAIRS)
def test_a_forgotten_password_is_reset_through_email(browser, live_server, mailoutbox, screen):
    """ "Forgot your password?" sends a one-time link (Django's email backend, locmem here); it sets a new password
    that signs in."""
    UserFactory(username=f"grace-{screen.name}", email=f"grace-{screen.name}@example.com")
    page = open_context(browser, screen).new_page()
    page.goto(f"{live_server.url}/accounts/login/")
    page.click("a[href='/accounts/password/reset/']")
    page.fill("#id_email", f"grace-{screen.name}@example.com")
    page.click("button.primary")
    expect(page.locator("h1")).to_have_text("请查收邮件" if screen.chinese else "Check your email")
    mail = eventually(lambda: mailoutbox[-1] if mailoutbox else None)
    link = next(line for line in mail.body.splitlines() if "/accounts/password/reset/" in line)
    page.goto(live_server.url + path_of(link))
    page.fill("#id_new_password1", NEW_PASSWORD)
    page.fill("#id_new_password2", NEW_PASSWORD)
    page.click("button.primary")
    expect(page.locator("h1")).to_have_text("密码已设置" if screen.chinese else "Password set")
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("#id_username", f"grace-{screen.name}")
    page.fill("#id_password", NEW_PASSWORD)
    page.click("form[action='/accounts/login/'] button[type=submit]")
    expect(page.locator("#id_text")).to_be_visible()
    page.context.close()
