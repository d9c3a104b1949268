"""The core's supporting parts: transcription and its cost, offline token counts, settings, secrets."""

import json
import logging
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async

from botapp import crypto, llm
from botapp.conversations import ReplyRefused, audio_transcribe
from botapp.logging import RedactSecretsFilter
from botapp.models import Bot, Channel, UsageKind, UsageRecord
from tests.fakes.openai_server import Behaviour

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.django_db(transaction=True)
async def test_transcription_returns_text_and_records_its_cost_per_minute(fake_openai, user):
    """Audio is sent as multipart, the transcript comes back, and the ledger charges duration × price."""
    fake_openai.enqueue(Behaviour(transcript="Turn on the lights.", duration=42.5), endpoint="transcription")
    transcript = await audio_transcribe(
        user=user, data=b"OggS" + b"\0" * 2000, filename="voice.ogg", channel="telegram"
    )
    assert transcript.text == "Turn on the lights."
    assert transcript.audio_seconds == Decimal("42.5")
    served = next(s for s in fake_openai.served if s.path.endswith("/audio/transcriptions"))
    assert served.form["model"] == "whisper-1" and served.form["file_size"] == 2004
    [record] = await sync_to_async(list)(UsageRecord.objects.all())
    assert record.kind == UsageKind.TRANSCRIPTION
    assert record.cost_usd == Decimal("42.5") * Decimal("0.006") / 60


@pytest.mark.django_db(transaction=True)
async def test_a_recording_over_25_mb_is_refused_before_upload(fake_openai, user):
    """Files over the provider's 25 MB limit get a sentence and are not sent."""
    with pytest.raises(ReplyRefused, match="25 MB"):
        await audio_transcribe(user=user, data=b"x" * (25 * 1024 * 1024 + 1), filename="a.ogg", channel="telegram")
    assert fake_openai.served == []


def test_token_counting_needs_no_network() -> None:
    """Token counts work in a fresh process where every network connection fails."""
    code = """
import socket
def refuse(*args, **kwargs):
    raise OSError("network disabled for this test")
socket.socket.connect = refuse
socket.create_connection = refuse
import django, os
os.environ["DJANGO_SETTINGS_MODULE"] = "jarvis_site.settings"
django.setup()
from botapp import llm
print(llm.count_tokens("hello world", model="gpt-4o-mini"), llm.count_tokens("hello world", model="gpt-3.5-turbo"),
      llm.count_tokens("hello world", model="some-local-model"))
import sys
print("bpe_openai" in sys.modules)  # the wrapper's vocabularies (80 MB) stay unloaded
"""
    env = {
        **os.environ,
        "DJANGO_SECRET_KEY": "x",
        "HOME": "/nonexistent",
        "XDG_CACHE_HOME": "/nonexistent",
        "TIKTOKEN_CACHE_DIR": "/nonexistent",
    }
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2", "2", "2", "False"]


def test_text_spelling_a_special_token_is_counted_as_text() -> None:
    """A message containing "<|endoftext|>" is counted like any text, not refused by the tokenizer."""
    assert llm.count_tokens("hi <|endoftext|> there", model="gpt-4o-mini") > llm.count_tokens(
        "hi there", model="gpt-4o"
    )
    assert llm.count_tokens("one two", model="gpt-4") == llm.count_tokens("one two", model="gpt-4o") == 2


def test_message_token_counts_include_the_chat_overhead() -> None:
    """Counting a chat adds the per-message and reply-priming tokens to the content."""
    messages = [{"role": "system", "content": "hello world"}, {"role": "user", "content": "hello world"}]
    assert llm.count_message_tokens(messages, model="gpt-4o") == 2 + 2 + 2 * llm.TOKENS_PER_MESSAGE + 3


def _settings_in_subprocess(env: dict[str, str]) -> dict:
    code = (
        "import json, django, os; os.environ['DJANGO_SETTINGS_MODULE']='jarvis_site.settings'; django.setup();"
        "from django.conf import settings as s;"
        "print(json.dumps({'debug': s.DEBUG, 'hosts': s.ALLOWED_HOSTS, 'db': s.DATABASES['default']['ENGINE'],"
        "'db_options': s.DATABASES['default'].get('OPTIONS', {}), 'key': s.OPENAI_API_KEY,"
        "'base': s.OPENAI_BASE_URL, 'model': s.OPENAI_MODEL, 'tg': s.TELEGRAM_BOT_TOKEN,"
        "'tg_base': s.TELEGRAM_API_BASE_URL, 'allowed': s.TELEGRAM_ALLOWED_USERS, 'q': s.Q_CLUSTER}))"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "OPENAI_", "TELEGRAM_", "DATABASE_"))}
    clean.pop("REDIS_URL", None)
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd="/",
        env={**clean, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_environment_variables_are_the_configuration() -> None:
    """Every contract variable is read from the environment under its documented name."""
    values = _settings_in_subprocess(
        {
            "DJANGO_SECRET_KEY": "k" * 50,
            "DJANGO_DEBUG": "true",
            "DJANGO_ALLOWED_HOSTS": "jarvis.example.com,localhost",
            "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/jarvis",
            "OPENAI_API_KEY": "sk-from-env",
            "OPENAI_BASE_URL": "http://127.0.0.1:11434/v1",
            "OPENAI_MODEL": "llama3",
            "TELEGRAM_BOT_TOKEN": "123:abc",
            "TELEGRAM_API_BASE_URL": "http://127.0.0.1:8081/",
            "TELEGRAM_ALLOWED_USERS": "42,@tony",
            "REDIS_URL": "redis://127.0.0.1:6379/3",
        }
    )
    assert values["debug"] is True
    assert values["hosts"] == ["jarvis.example.com", "localhost"]
    assert values["db"] == "django.db.backends.postgresql"
    assert (values["key"], values["base"], values["model"]) == ("sk-from-env", "http://127.0.0.1:11434/v1", "llama3")
    assert (values["tg"], values["tg_base"], values["allowed"]) == ("123:abc", "http://127.0.0.1:8081", "42,@tony")
    assert values["q"]["redis"] == "redis://127.0.0.1:6379/3" and "orm" not in values["q"]


def test_the_embedded_defaults_are_sqlite_tuned_for_writers_and_the_orm_broker() -> None:
    """With nothing set but a key: SQLite in WAL with immediate transactions, and django-q2 on the ORM."""
    values = _settings_in_subprocess({"DJANGO_SECRET_KEY": "k" * 50})
    assert values["db"] == "django.db.backends.sqlite3"
    assert values["db_options"]["transaction_mode"] == "IMMEDIATE"
    assert "journal_mode=WAL" in values["db_options"]["init_command"]
    assert values["db_options"]["timeout"] >= 5
    assert values["q"]["orm"] == "default"
    assert values["model"] == "gpt-4o-mini" and values["tg_base"] == "https://api.telegram.org"


def test_a_missing_secret_key_is_a_clear_startup_error() -> None:
    """Without DJANGO_SECRET_KEY (and not in debug) Django refuses to start and names the variable."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    result = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "check"],
        cwd="/tmp",
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY is not set" in result.stderr


@pytest.mark.django_db
def test_bot_tokens_are_encrypted_at_rest_and_masked() -> None:
    """The token is not stored in clear, reads back intact, and is shown only masked."""
    token = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"
    bot = Bot(name="b")
    bot.token = token
    bot.save()
    stored = Bot.objects.values_list("token_encrypted", flat=True).get(pk=bot.pk)
    assert token not in stored and "AAHdq" not in stored
    assert Bot.objects.get(pk=bot.pk).token == token
    assert bot.token_hint == "1234…Dsaw"
    assert crypto.mask("") == ""


def test_logs_never_carry_tokens_or_keys(caplog) -> None:
    """A log line with a bot token or an API key reaches the handler masked."""
    record = logging.LogRecord(
        "x",
        logging.INFO,
        __file__,
        1,
        "calling %s with key %s",
        ("https://api.telegram.org/bot123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/getMe", "sk-proj-abcdef123456"),
        None,
    )
    RedactSecretsFilter().filter(record)
    message = record.getMessage()
    assert "AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw" not in message and "abcdef123456" not in message
    assert "bot123456789:***" in message and "sk-***" in message


@pytest.mark.django_db
def test_allowlists_accept_ids_and_usernames() -> None:
    """An allowlist bot lets listed ids and @usernames in (any case) and nobody else; * opens it."""
    bot = Bot(name="b", access_policy="allowlist", allowed_users="42, @Tony\n@pepper")
    assert bot.allows(telegram_id=42, username=None)
    assert bot.allows(telegram_id=7, username="tony")
    assert bot.allows(telegram_id=8, username="PEPPER")
    assert not bot.allows(telegram_id=9, username="happy")
    assert Bot(name="c", access_policy="allowlist", allowed_users="*").allows(telegram_id=1, username=None)
    assert Bot(name="d", access_policy="open").allows(telegram_id=1, username=None)


def test_channels_are_named() -> None:
    """The ledger distinguishes the Telegram and web channels."""
    assert {Channel.TELEGRAM, Channel.WEB} <= set(Channel.values)
