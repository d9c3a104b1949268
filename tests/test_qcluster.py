"""A real `manage.py qcluster` process answers queued jobs, on the database broker and on Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django_q.brokers import get_broker
from django_q.conf import Conf
from django_q.models import OrmQ, Task
from django_q.tasks import async_task

from botapp.models import Conversation, Message, Role, UsageKind, UsageRecord
from tests.factories import ConversationFactory
from tests.fakes.openai_server import Behaviour, FakeOpenAI

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = "redis://127.0.0.1:6379/15"


def database_url() -> str:
    """The URL of the test database, so that another process works on the same data."""
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{db['USER']}{password}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def wait_until(predicate: Callable[[], object], *, timeout: float, process: subprocess.Popen) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if process.poll() is not None:
            raise AssertionError(f"qcluster exited early:\n{process.stdout.read()}")
        time.sleep(0.1)
    raise AssertionError("the worker did not finish the job in time")


def start_cluster(
    *, openai: FakeOpenAI, redis_url: str = "", extra_env: dict[str, str] | None = None
) -> subprocess.Popen:
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "REDIS_URL": redis_url,
        "Q_WORKERS": "1",
        "OPENAI_API_KEY": "sk-test-key-000000000000",
        "OPENAI_BASE_URL": openai.base_url,
        **(extra_env or {}),
    }
    return subprocess.Popen(
        [sys.executable, "manage.py", "qcluster"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def stop_cluster(process: subprocess.Popen) -> str:
    process.send_signal(signal.SIGTERM)
    try:
        output, _ = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
    return output


@pytest.fixture
def untitled(fake_openai: FakeOpenAI) -> Conversation:
    conversation = ConversationFactory()
    Message.objects.create(conversation=conversation, role=Role.USER, content="Plan a trip to Kyoto")
    Message.objects.create(conversation=conversation, role=Role.ASSISTANT, content="Here is a plan.")
    fake_openai.enqueue(Behaviour(text="Kyoto trip plan"))
    return conversation


@pytest.fixture
def redis_broker(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """This process queues to the Redis database the worker reads (django-q2 reads its Conf at import)."""
    monkeypatch.setattr(Conf, "REDIS", REDIS_URL)
    monkeypatch.setattr(Conf, "ORM", None)
    broker = get_broker()
    broker.purge_queue()
    yield broker
    broker.purge_queue()


def assert_titled_by_the_worker(conversation: Conversation, task_id: str, process: subprocess.Popen) -> None:
    def done() -> Task | None:
        return Task.objects.filter(id=task_id).first()

    task = wait_until(done, timeout=30, process=process)
    assert task.success, task.result
    conversation.refresh_from_db()
    assert conversation.title == "Kyoto trip plan"
    assert UsageRecord.objects.filter(conversation=conversation, kind=UsageKind.TITLE).count() == 1


def test_a_worker_on_the_database_broker_runs_a_queued_job(untitled, fake_openai):
    """A job queued in the database is picked up by a separate qcluster process, which calls the model."""
    process = start_cluster(openai=fake_openai)
    try:
        task_id = async_task("botapp.tasks.conversation_title", untitled.pk)
        assert OrmQ.objects.exists() or Task.objects.filter(id=task_id).exists()
        assert_titled_by_the_worker(untitled, task_id, process)
        assert not OrmQ.objects.exists(), "the worker acknowledged the job"
    finally:
        output = stop_cluster(process)
    assert "Q Cluster" in output


def test_a_worker_on_redis_runs_a_queued_job(untitled, fake_openai, redis_broker):
    """With REDIS_URL set, the job travels through Redis and a qcluster process answers it."""
    client = redis.Redis.from_url(REDIS_URL)
    client.ping()
    process = start_cluster(openai=fake_openai, redis_url=REDIS_URL)
    try:
        task_id = async_task("botapp.tasks.conversation_title", untitled.pk, broker=redis_broker)
        assert_titled_by_the_worker(untitled, task_id, process)
        assert not OrmQ.objects.exists(), "nothing went through the database queue"
        assert redis_broker.queue_size() == 0
    finally:
        stop_cluster(process)
