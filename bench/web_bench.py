"""Benchmark 3: time to the first streamed byte of an answer in the browser endpoint, less the model's own.

Jarvis runs under uvicorn on a scratch database; the fake model waits `--model-ttft` seconds before its first
token. The figure is the client's time to the first answer byte (the first `delta` event) minus that wait:
what storing the question, checking the budget and building the context add before the answer flows.
"""

from __future__ import annotations

import argparse
import re
import socket
import subprocess
import sys
import time

import httpx
from harness import ROOT, fakes, scratch_database, summary

from tests.fakes.openai_server import Behaviour


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--model-ttft", type=float, default=0.2, help="seconds the fake model takes to its first token")
    args = parser.parse_args()

    with scratch_database() as scratch, fakes() as (_telegram, openai):
        openai.default = Behaviour(delay=args.model_ttft)
        env = scratch.env(OPENAI_API_KEY="sk-bench", OPENAI_BASE_URL=openai.base_url, DJANGO_ALLOWED_HOSTS="127.0.0.1")
        persona = subprocess.run(
            [sys.executable, "manage.py", "shell", "-c",
             "from django.contrib.auth.models import User; from botapp.models import Persona;"
             "User.objects.create_user('bench', password='bench-pass-123');"
             "print(Persona.objects.get(name='Jarvis').pk)"],
            cwd=ROOT, env=env, check=True, capture_output=True, text=True,
        ).stdout.split()[-1]  # fmt: skip
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "jarvis_site.asgi:application", "--port", str(port), "--log-level",
             "warning"],
            cwd=ROOT, env=env,
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        try:
            with httpx.Client(base_url=base, timeout=30, follow_redirects=True) as client:
                for _ in range(100):
                    try:
                        login_page = client.get("/accounts/login/")
                        break
                    except httpx.ConnectError:
                        time.sleep(0.1)
                token = client.cookies["csrftoken"]
                client.post(
                    "/accounts/login/",
                    data={"username": "bench", "password": "bench-pass-123", "csrfmiddlewaretoken": token},
                    headers={"Referer": base + "/accounts/login/"},
                )
                assert login_page.status_code == 200
                created = client.post(
                    "/c/new/",
                    data={"csrfmiddlewaretoken": client.cookies["csrftoken"], "persona": persona},
                    headers={"Referer": base},
                )
                match = re.search(r"/c/(\d+)/", str(created.url))
                if match is None:
                    raise SystemExit(f"Could not create a conversation: HTTP {created.status_code} at {created.url}.")
                send = f"/c/{match.group(1)}/send/"
                overheads = []
                for i in range(args.samples + 3):
                    started = time.monotonic()
                    with client.stream(
                        "POST",
                        send,
                        data={"text": f"question {i}"},
                        headers={"X-CSRFToken": client.cookies["csrftoken"], "Referer": base},
                    ) as response:
                        first = None
                        for line in response.iter_lines():
                            if first is None and '"delta"' in line:
                                first = time.monotonic() - started
                    if i >= 3:  # the first few warm up connections and caches
                        overheads.append(first - args.model_ttft)
        finally:
            server.terminate()
            server.wait(10)

    figures = summary(overheads)
    print("\n## 3. Web streaming: first answer byte minus the model's time to first token\n")
    print("| figure | ms |\n|---|---:|")
    for q in ("p50", "p99", "mean"):
        print(f"| overhead {q} | {figures[q] * 1000:.1f} |")


if __name__ == "__main__":
    main()
