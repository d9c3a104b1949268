"""Sign-in throttling on both login pages, HTTPS settings from the environment, and the admin's CSP in Chromium."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from axes.models import AccessAttempt
from django.test import Client
from django.urls import reverse
from playwright.sync_api import Browser, Page, expect

from botapp.models import Channel, Profile, UsageKind
from botapp.usage import usage_record_create
from botapp.web.security import CONTENT_SECURITY_POLICY
from tests.admin_support import fast_passwords_fixture  # noqa: F401  (fixture)
from tests.asgi_server import AsgiServer
from tests.factories import ConversationFactory, UserFactory

pytest_plugins = ["tests.browser_support"]

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse battery staple"
LIMIT = 5  # LOGIN_FAILURE_LIMIT's default


@pytest.fixture(scope="module")
def asgi_server(django_db_setup, openai_server) -> Iterator[AsgiServer]:
    with AsgiServer(openai_base_url=openai_server.base_url) as server:
        yield server


# --- Sign-in throttling -------------------------------------------------------------------------


def sign_in(http: httpx.Client, path: str, username: str, password: str) -> httpx.Response:
    """Open a login page and post its form, as a browser does (CSRF cookie and token included)."""
    page = http.get(path)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    return http.post(path, data={"csrfmiddlewaretoken": token, "username": username, "password": password})


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("path", "staff"), [("/accounts/login/", False), ("/admin/login/?next=/admin/", True)], ids=["site", "admin"]
)
def test_wrong_passwords_lock_out_that_username_from_that_address(asgi_server, path, staff) -> None:
    """The 5th wrong password locks that username out from that address, with a sentence, and the right password
    is refused too; another person at the same address still signs in; the admin lists the attempts."""
    UserFactory(username="ada", is_staff=staff)
    UserFactory(username="grace", is_staff=staff)
    with httpx.Client(base_url=asgi_server.url, timeout=30) as http:
        for attempt in range(LIMIT - 1):
            response = sign_in(http, path, "ada", f"wrong-{attempt}")
            assert response.status_code == 200, (attempt, response.status_code)
        assert sign_in(http, path, "ada", "wrong-again").status_code == 429
        locked = sign_in(http, path, "ada", PASSWORD)
    assert locked.status_code == 429
    assert "Too many failed sign-ins" in locked.text
    assert "15 minutes" in locked.text
    assert locked.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert locked.headers["Retry-After"] == "900"
    with httpx.Client(base_url=asgi_server.url, timeout=30) as http:
        assert sign_in(http, path, "grace", PASSWORD).status_code == 302

    boss = UserFactory(username="boss", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(boss)
    attempts = client.get(reverse("admin:axes_accessattempt_changelist")).content.decode()
    assert "ada" in attempts
    assert "127.0.0.1" in attempts
    (attempt,) = AccessAttempt.objects.filter(username="ada")
    assert attempt.failures_since_start >= LIMIT
    assert "wrong-" not in attempt.post_data, "a mistyped password is not kept"


@pytest.mark.django_db
@pytest.mark.usefixtures("fast_passwords")
def test_a_successful_sign_in_clears_the_failures(client) -> None:
    """Failures below the limit are forgotten once the person signs in, so typos never add up to a lockout."""
    UserFactory(username="ada")
    url = reverse("login")
    for _round in range(2):
        for attempt in range(LIMIT - 1):
            assert client.post(url, {"username": "ada", "password": f"typo-{attempt}"}).status_code == 200
        assert client.post(url, {"username": "ada", "password": PASSWORD}).status_code == 302
        client.post(reverse("logout"))


# --- HTTPS settings -----------------------------------------------------------------------------

HTTPS_ENV = {
    "DJANGO_SECURE_SSL_REDIRECT": "true",
    "DJANGO_SECURE_COOKIES": "true",
    "DJANGO_SECURE_HSTS_SECONDS": "31536000",
    "DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS": "true",
    "DJANGO_SECURE_HSTS_PRELOAD": "true",
    "DJANGO_SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto",
}
PRODUCTION_ENV = {
    "DJANGO_SECRET_KEY": "q8Zr!m2Lx@5Vt#9Nc$7Bw%3Hk^6Jd&4Fp*1Gs(0Ye)Ua-Ti_Oo+Re=Wq",
    "DJANGO_DEBUG": "false",
    "DJANGO_ALLOWED_HOSTS": "jarvis.example.com",
}


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`manage.py` in a fresh process with `env` on top of this one's (less the test-only async switch)."""
    base = {name: value for name, value in os.environ.items() if name != "DJANGO_ALLOW_ASYNC_UNSAFE"}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_is_silent_with_the_https_settings_and_warns_without_them() -> None:
    """`manage.py check --deploy` finds nothing with the documented HTTPS variables set, and names each one unset."""
    bare = manage("check", "--deploy", env=PRODUCTION_ENV)
    for warning in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert warning in bare.stderr + bare.stdout, warning
    checked = manage("check", "--deploy", env={**PRODUCTION_ENV, **HTTPS_ENV})
    assert (checked.returncode, checked.stderr) == (0, ""), checked.stderr
    assert checked.stdout == "System check identified no issues (0 silenced).\n"


def test_https_variables_become_djangos_settings() -> None:
    """Each variable lands in the Django setting it is documented for; unset, all stay off."""
    script = (
        "import json; from django.conf import settings as s; print(json.dumps([s.SECURE_SSL_REDIRECT, "
        "s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_HSTS_SECONDS, s.SECURE_HSTS_INCLUDE_SUBDOMAINS, "
        "s.SECURE_HSTS_PRELOAD, s.SECURE_PROXY_SSL_HEADER]))"
    )
    on = manage("shell", "--no-imports", "-c", script, env={**PRODUCTION_ENV, **HTTPS_ENV})
    assert json.loads(on.stdout) == [True, True, True, 31536000, True, True, ["HTTP_X_FORWARDED_PROTO", "https"]]
    off = manage("shell", "--no-imports", "-c", script, env=PRODUCTION_ENV)
    assert json.loads(off.stdout) == [False, False, False, 0, False, False, None]


@pytest.mark.django_db(transaction=True)
def test_behind_an_https_proxy_plain_http_is_redirected_and_https_is_strict(openai_server) -> None:
    """Under uvicorn: http is sent to https; a request the proxy marks https gets HSTS and Secure cookies."""
    with AsgiServer(openai_base_url=openai_server.base_url, extra_env=HTTPS_ENV, ready_status=301) as server:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            plain = http.get("/accounts/login/")
            secure = http.get("/accounts/login/", headers={"X-Forwarded-Proto": "https"})
    assert plain.status_code == 301
    assert plain.headers["Location"] == f"https://127.0.0.1:{server.port}/accounts/login/"
    assert secure.status_code == 200
    assert secure.headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains; preload"
    assert "Secure" in secure.headers["Set-Cookie"]


# --- The admin's Content-Security-Policy --------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.usefixtures("fast_passwords")
def test_every_admin_page_sends_the_policy_and_holds_no_inline_script_or_style(client) -> None:
    """The admin's pages (login included) carry the chat page's CSP, and nothing in them needs an exception."""
    boss = UserFactory(username="boss", is_staff=True, is_superuser=True)
    conversation = ConversationFactory(user=boss)
    login = client.get(reverse("admin:login"))
    assert login.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    client.force_login(boss)
    urls = [
        reverse("admin:index"),
        reverse("admin:botapp_usage_dashboard"),
        reverse("admin:auth_user_changelist"),
        reverse("admin:auth_user_change", args=[boss.pk]),
        reverse("admin:botapp_conversation_change", args=[conversation.pk]),
        reverse("admin:botapp_modelprice_add"),
        reverse("admin:axes_accessattempt_changelist"),
    ]
    for url in urls:
        response = client.get(url)
        assert response.status_code == 200, url
        assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY, url
        html = response.content.decode()
        assert "<style" not in html, url
        assert " style=" not in html, url
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), url
    assert "Content-Security-Policy" in client.get("/").headers, "the chat page keeps its own"


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(locale="en-US", viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    # Every CSP violation the page reports, whatever caused it.
    context.add_init_script(
        "window.__violations = [];"
        "document.addEventListener('securitypolicyviolation', e => window.__violations.push("
        "e.violatedDirective + ' ' + e.blockedURI + ' ' + e.sourceFile + ':' + e.lineNumber));"
    )
    page = context.new_page()
    page.console_messages_seen = []
    page.on("console", lambda message: page.console_messages_seen.append(f"{message.type}: {message.text}"))
    yield page
    context.close()


def violations(page: Page) -> list[str]:
    return page.evaluate("window.__violations") + [m for m in page.console_messages_seen if "Security Policy" in m]


@pytest.mark.django_db(transaction=True)
def test_the_admins_own_javascript_and_styles_work_under_the_policy(page, asgi_server) -> None:
    """In Chromium: sign in, the dashboard chart is drawn with its stylesheet, the action menu counts and
    blocks, the date shortcut fills a date, the theme toggles; and the page reports no CSP violation."""
    UserFactory(username="boss", is_staff=True, is_superuser=True)
    spender = UserFactory(username="spender")
    conversation = ConversationFactory(user=spender)
    usage_record_create(
        user=spender, kind=UsageKind.CHAT, model="gpt-4o-mini", channel=Channel.WEB, conversation=conversation,
        input_tokens=200_000, output_tokens=50_000,
    )  # fmt: skip

    page.goto(f"{asgi_server.url}/admin/login/?next=/admin/")
    page.fill("#id_username", "boss")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    expect(page.locator("#user-tools")).to_contain_text("boss")

    dashboard = page.goto(f"{asgi_server.url}/admin/botapp/usagerecord/dashboard/")
    assert dashboard.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    bar = page.locator("svg.usage-chart rect.cost").last
    expect(bar).to_be_visible()
    assert bar.evaluate("element => getComputedStyle(element).fill") == "rgb(65, 118, 144)"
    assert page.locator(".usage-totals").evaluate("element => getComputedStyle(element).display") == "flex"
    assert Decimal(page.locator("#total-cost").inner_text().lstrip("$")) > 0

    page.goto(f"{asgi_server.url}/admin/auth/user/")
    row = page.locator("#result_list tr", has_text="spender")
    row.locator("input.action-select").check()
    expect(page.locator(".action-counter")).to_contain_text("1 of 2 selected")
    page.select_option("select[name=action]", "block")
    page.click("button[name=index]")
    expect(page.locator(".messagelist")).to_contain_text("1 person blocked.")
    assert Profile.objects.get(user=spender).is_blocked

    page.goto(f"{asgi_server.url}/admin/botapp/modelprice/add/")
    page.fill("#id_valid_from_0", "")
    page.locator(".datetimeshortcuts a", has_text="Today").first.click()
    expect(page.locator("#id_valid_from_0")).not_to_have_value("")

    theme = page.evaluate("document.documentElement.dataset.theme || 'auto'")
    page.locator("button.theme-toggle").first.click()
    assert page.evaluate("document.documentElement.dataset.theme") != theme

    assert violations(page) == []


def test_the_browser_test_would_see_a_violation(browser) -> None:
    """The violation listener is not deaf: an inline style under the policy is reported in Chromium."""
    context = browser.new_context()
    context.add_init_script(
        "window.__violations = [];"
        "document.addEventListener('securitypolicyviolation', e => window.__violations.push(e.violatedDirective));"
    )
    page = context.new_page()
    page.route(
        "http://jarvis.test/",
        lambda route: route.fulfill(
            body="<p>hi</p><style>p { color: red }</style>",
            headers={"Content-Type": "text/html", "Content-Security-Policy": CONTENT_SECURITY_POLICY},
        ),
    )
    page.goto("http://jarvis.test/")
    page.wait_for_function("window.__violations.length > 0")
    assert page.evaluate("window.__violations") == ["style-src-elem"]
    context.close()
