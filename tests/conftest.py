"""Shared fixtures: the fake OpenAI server, people and conversations."""

from collections.abc import Iterator

import pytest
from asgiref.sync import SyncToAsync
from django.db import connections
from django.utils import translation

from botapp.defaults import seed_defaults, seed_media_prices
from botapp.models import ModelImagePrice, ModelPrice, Persona, Tool
from botapp.tools.registry import builtin_tools_ensure
from tests.factories import ConversationFactory, UserFactory
from tests.fakes.openai_server import FakeOpenAI


@pytest.fixture(scope="session")
def openai_server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture
def fake_openai(openai_server: FakeOpenAI, settings) -> Iterator[FakeOpenAI]:
    """The fake provider, emptied, with Jarvis pointed at it."""
    openai_server.reset()
    settings.OPENAI_API_KEY = "sk-test-key-000000000000"
    settings.OPENAI_BASE_URL = openai_server.base_url
    settings.OPENAI_MAX_RETRIES = 2
    settings.OPENAI_TIMEOUT = 5.0
    yield openai_server
    openai_server.reset()


@pytest.fixture
def user(db):
    return UserFactory()


@pytest.fixture
def conversation(user):
    return ConversationFactory(user=user)


@pytest.fixture(autouse=True)
def _seeded_defaults(request: pytest.FixtureRequest) -> None:
    """Transactional tests flush the database, data migrations included: put the defaults back."""
    marker = request.node.get_closest_marker("django_db")
    if marker is None:
        return
    request.getfixturevalue("transactional_db" if marker.kwargs.get("transaction") else "db")
    seed_defaults(ModelPrice, Persona)
    seed_media_prices(ModelPrice, ModelImagePrice)
    builtin_tools_ensure(Tool)


@pytest.fixture(autouse=True)
def _media_root(settings, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Generated pictures and recordings go to a temporary folder, never into the checkout."""
    settings.MEDIA_ROOT = str(tmp_path_factory.mktemp("media"))


@pytest.fixture(autouse=True)
def _close_worker_connections() -> Iterator[None]:
    """Close the connection `sync_to_async` opened in its worker thread, so the test database can be dropped."""
    yield
    SyncToAsync.single_thread_executor.submit(connections.close_all).result()


@pytest.fixture(autouse=True)
def _language_reset() -> Iterator[None]:
    """A request through the test client leaves its language active in this thread: the next test starts in English."""
    yield
    translation.deactivate()
