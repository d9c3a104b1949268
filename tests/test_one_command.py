"""One command: `manage.py jarvis_setup` prepares a fresh Jarvis, and `./jarvis up` runs it from a clean copy."""

from __future__ import annotations

import http.cookiejar
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.contrib.auth import authenticate, get_user_model
from django.core.management import CommandError, call_command
from django_q.models import Schedule

from botapp.models import Bot
from tests.factories import UserFactory
from tests.fakes.telegram_server import FakeTelegram

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "515151515:AAone-command-test-token-000000000"


def setup(tmp_path: Path, **env: str) -> tuple[str, str]:
    """Run jarvis_setup with `env` as the process environment; returns its output and the processes chosen."""
    processes = tmp_path / "processes"
    out = io.StringIO()
    old = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        call_command("jarvis_setup", "--skip-static", "--processes-file", str(processes), stdout=out)
    finally:
        for name, value in old.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return out.getvalue(), processes.read_text().strip()


@pytest.mark.django_db
def test_first_setup_creates_an_admin_whose_printed_password_works(tmp_path):
    """A fresh database gets a superuser; the generated password printed once signs in."""
    output, processes = setup(tmp_path, DJANGO_SUPERUSER_USERNAME="boss", DJANGO_SUPERUSER_PASSWORD="")

    password = re.search(r"as 'boss' with the password (\S+)", output).group(1)
    assert authenticate(username="boss", password=password).is_superuser
    assert processes == "web worker"
    assert {s.name for s in Schedule.objects.all()} == {"Daily spend report", "Message retention"}

    again, _ = setup(tmp_path, DJANGO_SUPERUSER_USERNAME="boss", DJANGO_SUPERUSER_PASSWORD="")
    assert "admin: sign in at" in again and password not in again
    assert get_user_model().objects.filter(is_superuser=True).count() == 1
    assert Schedule.objects.count() == 2


@pytest.mark.django_db
def test_a_password_from_the_environment_is_used_and_never_printed(tmp_path):
    """DJANGO_SUPERUSER_PASSWORD becomes the admin's password and stays out of the output."""
    output, _ = setup(tmp_path, DJANGO_SUPERUSER_USERNAME="root", DJANGO_SUPERUSER_PASSWORD="Very-secret-1234")

    assert "from DJANGO_SUPERUSER_PASSWORD" in output and "Very-secret-1234" not in output
    assert authenticate(username="root", password="Very-secret-1234") is not None


@pytest.mark.django_db
def test_a_taken_admin_name_is_not_promoted(tmp_path):
    """An ordinary account with the admin's name keeps its rights; the output says how to make an admin."""
    UserFactory(username="admin")
    output, _ = setup(tmp_path, DJANGO_SUPERUSER_USERNAME="admin", DJANGO_SUPERUSER_PASSWORD="")

    assert "createsuperuser" in output
    assert not get_user_model().objects.filter(is_superuser=True).exists()


@pytest.mark.django_db
def test_missing_settings_are_explained_and_a_token_adds_the_bot(tmp_path, settings):
    """No key and no token: sentences saying what to set. With a token: the default bot and a bot process."""
    settings.OPENAI_API_KEY, settings.OPENAI_BASE_URL = "", None
    output, processes = setup(tmp_path)
    assert "OPENAI_API_KEY is not set: the chat page and the admin run" in output
    assert "the Telegram bot is not started" in output and "TELEGRAM_BOT_TOKEN=" in output
    assert processes == "web worker"

    settings.TELEGRAM_BOT_TOKEN = TOKEN
    output, processes = setup(tmp_path)
    assert Bot.objects.get(name="default").token == TOKEN
    assert processes == "web worker bot"
    assert "the Telegram bot is not started" not in output and TOKEN not in output


@pytest.mark.django_db
def test_an_unreachable_redis_is_a_sentence_not_a_traceback(tmp_path, settings):
    """REDIS_URL pointing nowhere stops the start with a line that says what to do."""
    settings.REDIS_URL = "redis://127.0.0.1:9/0"
    with pytest.raises(CommandError, match=r"Cannot reach Redis at REDIS_URL: .* leave it empty"):
        setup(tmp_path)


# --- ./jarvis up from a clean copy ----------------------------------------------------------------


def clean_copy(target: Path) -> None:
    """The files a fresh clone would have (tracked and new, nothing ignored), and the existing virtualenv."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    # A virtualenv that is this one's packages: nothing is installed again.
    venv = target / ".venv"
    venv.mkdir()
    shutil.copy2(ROOT / ".venv" / "pyvenv.cfg", venv / "pyvenv.cfg")
    for part in ("bin", "lib", "include"):
        if (ROOT / ".venv" / part).exists():
            (venv / part).symlink_to(ROOT / ".venv" / part)
    (venv / ".installed-requirements.txt").touch()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Output:
    """Collects a process's output lines in a thread, so the test can wait for one."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)


def wait_for(check, *, timeout: float, process: subprocess.Popen, output: Output) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if process.poll() is not None:
            raise AssertionError(f"./jarvis up exited with {process.returncode}:\n{output.text}")
        time.sleep(0.2)
    raise AssertionError(f"./jarvis up did not get there in {timeout} s:\n{output.text}")


def get_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (a local http URL)
            return response.status
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def sign_in(base: str, username: str, password: str) -> str:
    """Sign in through the admin's login form; returns the path the browser ends up on."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page = opener.open(f"{base}/admin/login/", timeout=5).read().decode()
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    form = urllib.parse.urlencode(
        {"csrfmiddlewaretoken": csrf, "username": username, "password": password, "next": "/admin/"}
    ).encode()
    request = urllib.request.Request(  # noqa: S310 (a local http URL)
        f"{base}/admin/login/", data=form, headers={"Referer": f"{base}/admin/login/"}
    )
    with opener.open(request, timeout=5) as response:
        return urllib.parse.urlparse(response.url).path


@pytest.fixture
def fresh_clone(tmp_path: Path) -> Iterator[Path]:
    target = tmp_path / "jarvis"
    target.mkdir()
    clean_copy(target)
    yield target


def test_jarvis_up_runs_web_worker_and_bot_from_a_clean_copy(fresh_clone):
    """`./jarvis up` writes .env with a secret key, migrates, serves the admin, runs a worker and the bot."""
    port = free_port()
    with FakeTelegram(tokens=[TOKEN]) as telegram:
        env = {
            "PATH": os.environ["PATH"],
            "HOME": os.environ.get("HOME", "/tmp"),
            "LANG": "C.UTF-8",
            "PORT": str(port),
            "TELEGRAM_BOT_TOKEN": TOKEN,
            "TELEGRAM_API_BASE_URL": telegram.root_url,
        }
        process = subprocess.Popen(
            ["./jarvis", "up"],
            cwd=fresh_clone,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        output = Output(process)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for(lambda: get_status(f"{base}/admin/login/") == 200, timeout=90, process=process, output=output)
            running = r"worker\.1 .*Q Cluster .* running"
            wait_for(lambda: re.search(running, output.text), timeout=30, process=process, output=output)
            # Polling begins by clearing any webhook: the bot process is up and talking to the Bot API.
            wait_for(lambda: telegram.calls("deleteWebhook", token=TOKEN), timeout=30, process=process, output=output)
            password = re.search(r"as 'admin' with the password (\S+)", output.text).group(1)
            assert sign_in(base, "admin", password) == "/admin/"
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    text = output.text
    secret = re.search(r"^DJANGO_SECRET_KEY=(.+)$", (fresh_clone / ".env").read_text(), re.MULTILINE)
    assert secret and len(secret.group(1)) >= 50
    assert "OPENAI_API_KEY is not set: the chat page and the admin run" in text
    assert "starting web worker bot" in text and "bot.1" in text
    assert "Traceback" not in text and TOKEN not in text
    assert get_status(f"{base}/admin/login/") is None, "everything stopped with ./jarvis up"
