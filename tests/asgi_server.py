"""The real web app under uvicorn in a subprocess, on the test database, for tests that need real streaming.

pytest-django's `live_server` is a threaded WSGI server: it cannot stream an answer, nor tell a view that
the client went away. This runs `uvicorn jarvis_site.asgi:application` exactly as production does, with
static files collected and served by whitenoise, pointed at the test database and the fake OpenAI server.
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def database_url_for_tests() -> str:
    """A DATABASE_URL for the database the test run is using (the test copy, not the real one)."""
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    credentials = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{credentials}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class AsgiServer:
    """`uvicorn jarvis_site.asgi:application` on a free port; use as a context manager."""

    def __init__(
        self, *, openai_base_url: str, extra_env: dict[str, str] | None = None, ready_status: int = 200
    ) -> None:
        # What the login page answers once the app serves: 301 when it redirects plain http to https.
        self.ready_status = ready_status
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "jarvis_site.settings",
            "DJANGO_DEBUG": "false",
            "DATABASE_URL": database_url_for_tests(),
            "OPENAI_API_KEY": "sk-test-key-000000000000",
            "OPENAI_BASE_URL": openai_base_url,
            "OPENAI_MAX_RETRIES": "0",
            "OPENAI_TIMEOUT": "5",
            "LOG_LEVEL": "WARNING",
            **(extra_env or {}),
        }
        # The app must refuse sync ORM calls from async code, as in production.
        self.env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> AsgiServer:
        subprocess.run(
            [sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"],
            cwd=ROOT,
            env=self.env,
            check=True,
        )
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "uvicorn", "jarvis_site.asgi:application",
                "--host", "127.0.0.1", "--port", str(self.port), "--lifespan", "off", "--no-access-log",
            ],
            cwd=ROOT,
            env=self.env,
        )  # fmt: skip
        self._wait_until_up()
        return self

    def _wait_until_up(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"uvicorn exited with code {self.process.returncode} before serving.")
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            try:
                connection.request("GET", "/accounts/login/")
                if connection.getresponse().status == self.ready_status:
                    return
            except (ConnectionError, TimeoutError, http.client.HTTPException):
                time.sleep(0.2)
            finally:
                connection.close()
        raise RuntimeError("uvicorn did not start serving within 30 seconds.")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
