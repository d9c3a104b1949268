"""Fixtures and helpers shared by the admin, broadcast and demo-data tests.

Test modules import the fixture functions (named `*_fixture`, registered under the short name) so they
are available without touching the shared conftest.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.test import Client

from tests.factories import UserFactory
from tests.fakes.telegram_server import FakeTelegram

ADMIN_TOKEN = "555000111:AAadminTestTokenNeverShownInFull-xyz987"
ADMIN_BOT_USERNAME = "jarvis_admin_test_bot"


@pytest.fixture(name="staff_client")
def staff_client_fixture(db) -> Client:
    """A client signed in as a superuser (staff with every permission)."""
    admin = UserFactory(username="boss", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(admin)
    client.user = admin
    return client


@pytest.fixture(name="member_client")
def member_client_fixture(db) -> Client:
    """A client signed in as an ordinary person: not staff."""
    person = UserFactory(username="member")
    client = Client()
    client.force_login(person)
    return client


@pytest.fixture(scope="session", name="admin_telegram_server")
def admin_telegram_server_fixture() -> Iterator[FakeTelegram]:
    with FakeTelegram(tokens=[ADMIN_TOKEN]) as server:
        server.add_bot(ADMIN_TOKEN, username=ADMIN_BOT_USERNAME)
        yield server


@pytest.fixture(name="fake_telegram")
def fake_telegram_fixture(admin_telegram_server: FakeTelegram, settings) -> Iterator[FakeTelegram]:
    """The fake Bot API, emptied, with Jarvis pointed at it."""
    admin_telegram_server.reset()
    settings.TELEGRAM_API_BASE_URL = admin_telegram_server.root_url
    yield admin_telegram_server
    admin_telegram_server.reset()


def assert_login_page(response: object, url: str) -> None:
    """A non-staff request ends on the admin login page."""
    assert response.status_code == 302, (url, response.status_code)
    assert response["Location"].startswith("/admin/login/"), (url, response["Location"])


@pytest.fixture(name="fast_passwords")
def fast_passwords_fixture(settings) -> None:
    """Hash test passwords with MD5: the real hasher makes creating many people take seconds each."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
