"""Benchmark 5: what a tool round costs beyond the model's own time, and the tool calls per answer.

Jarvis runs under uvicorn on a scratch database, with web search on the fake SearXNG and page reading on the
fake site. The fake model takes `--model-ttft` seconds before every response and decides from the request:
a question that needs the web gets a `web_search` call, one that names a page also a `read_web_page` call in a
second round, and anything else is answered at once. Figures:

* overhead per tool round: (time to the first answer word of a one-search question − 2 model waits) minus
  (the same for a question answered without tools − 1 model wait): storing the round, running the search
  on the fake SearXNG, storing the result and sending the second request;
* tool calls per answer over a mixed set of questions, as stored in the database.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import subprocess
import sys
import time
from typing import Any

import httpx
from harness import ROOT, fakes, scratch_database, summary

from tests.fakes.openai_server import Behaviour
from tests.fakes.tool_servers import FakeWeb


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def responder(delay: float, site: str):
    """The fake model's policy: search when asked about news, then read the page it names, then answer."""

    def decide(body: dict[str, Any]) -> Behaviour:
        messages = body.get("messages", [])
        last_question = max(i for i, m in enumerate(messages) if m["role"] == "user")
        question = messages[last_question]["content"]
        rounds = sum(1 for m in messages[last_question:] if m["role"] == "assistant" and m.get("tool_calls"))
        if "news" in question and rounds == 0 and body.get("tools"):
            return Behaviour(delay=delay, tool_calls=[{"name": "web_search", "arguments": {"query": question[:40]}}])
        if "page" in question and rounds == 1 and body.get("tools"):
            url = f"{site}/article"
            return Behaviour(delay=delay, tool_calls=[{"name": "read_web_page", "arguments": {"url": url}}])
        return Behaviour(delay=delay, text="Here is the answer, in a few words.")

    return decide


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--model-ttft", type=float, default=0.2, help="seconds the fake model takes to respond")
    args = parser.parse_args()

    with scratch_database() as scratch, fakes() as (_telegram, openai), FakeWeb() as web:
        openai.responder = responder(args.model_ttft, web.url)
        env = scratch.env(
            OPENAI_API_KEY="sk-bench", OPENAI_BASE_URL=openai.base_url, DJANGO_ALLOWED_HOSTS="127.0.0.1",
            SEARXNG_URL=web.url, TOOLS_ALLOW_PRIVATE_URLS="true",
        )  # fmt: skip
        persona = subprocess.run(
            [sys.executable, "manage.py", "shell", "-c",
             "from django.contrib.auth.models import User; from botapp.models import Persona, Tool;"
             "User.objects.create_user('bench', password='bench-pass-123');"
             "p = Persona.objects.get(name='Jarvis'); p.tools.set(Tool.objects.filter(kind='builtin'));"
             "print(p.pk)"],
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
            with httpx.Client(base_url=base, timeout=60, follow_redirects=True) as client:
                for _ in range(100):
                    try:
                        client.get("/accounts/login/")
                        break
                    except httpx.ConnectError:
                        time.sleep(0.1)
                client.post(
                    "/accounts/login/",
                    data={"username": "bench", "password": "bench-pass-123",
                          "csrfmiddlewaretoken": client.cookies["csrftoken"]},
                    headers={"Referer": base + "/accounts/login/"},
                )  # fmt: skip

                def conversation() -> str:
                    created = client.post(
                        "/c/new/",
                        data={"csrfmiddlewaretoken": client.cookies["csrftoken"], "persona": persona},
                        headers={"Referer": base},
                    )
                    match = re.search(r"/c/(\d+)/", str(created.url))
                    if match is None:
                        raise SystemExit(f"Could not create a conversation: HTTP {created.status_code}.")
                    return f"/c/{match.group(1)}/send/"

                def ask(send: str, text: str) -> tuple[float, list[dict[str, Any]]]:
                    started = time.monotonic()
                    first = None
                    events = []
                    with client.stream(
                        "POST", send, data={"text": text},
                        headers={"X-CSRFToken": client.cookies["csrftoken"], "Referer": base},
                    ) as response:  # fmt: skip
                        for line in response.iter_lines():
                            if not line:
                                continue
                            event = json.loads(line)
                            events.append(event)
                            if first is None and event["type"] == "delta":
                                first = time.monotonic() - started
                    return first, events

                plain, searched, search_ms = [], [], []
                for i in range(args.samples + 3):
                    # A fresh conversation each time: the same history length for both kinds of question.
                    first, _events = ask(conversation(), f"question {i}")
                    first_tool, events = ask(conversation(), f"any news about {i}?")
                    if i >= 3:  # the first few warm up connections, caches and imports
                        plain.append(first - args.model_ttft)
                        searched.append(first_tool - 2 * args.model_ttft)
                        search_ms += [e["duration_ms"] for e in events if e["type"] == "tool" and e["state"] == "done"]
                mixed = [
                    "hello there", "any news about the Moon?", "any news on this page?", "thanks",
                    "news today?", "read the page with the news", "what is 2 + 2?", "more news please",
                ]  # fmt: skip
                calls_per_answer = []
                for text in mixed * 3:
                    _first, events = ask(conversation(), text)
                    calls_per_answer.append(sum(1 for e in events if e["type"] == "tool" and e["state"] == "done"))
        finally:
            server.terminate()
            server.wait(10)
        stored = subprocess.run(
            [sys.executable, "manage.py", "shell", "-c",
             "from botapp.models import Message, ToolCall, UsageRecord;"
             "answers = Message.objects.filter(role='assistant', status='complete').count();"
             "print(answers, ToolCall.objects.count(), UsageRecord.objects.count(),"
             " ToolCall.objects.exclude(status='ok').count())"],
            cwd=ROOT, env=env, check=True, capture_output=True, text=True,
        ).stdout.split()[-4:]  # fmt: skip

    no_tool, one_search = summary(plain), summary(searched)
    print("\n## 5. Tools: overhead per tool round, and tool calls per answer\n")
    print(f"Fake model: {args.model_ttft * 1000:.0f} ms before each response; {args.samples} questions of each kind.\n")
    print("| figure | p50 ms | p99 ms | mean ms |\n|---|---:|---:|---:|")
    print(f"| first answer word − model time, no tools | {no_tool['p50'] * 1000:.1f} | {no_tool['p99'] * 1000:.1f} "
          f"| {no_tool['mean'] * 1000:.1f} |")  # fmt: skip
    print(f"| first answer word − 2 × model time, one search | {one_search['p50'] * 1000:.1f} "
          f"| {one_search['p99'] * 1000:.1f} | {one_search['mean'] * 1000:.1f} |")  # fmt: skip
    per_round = {q: (one_search[q] - no_tool[q]) * 1000 for q in ("p50", "p99", "mean")}
    print(f"| **Jarvis overhead per tool round** (difference) | **{per_round['p50']:.1f}** | {per_round['p99']:.1f} "
          f"| {per_round['mean']:.1f} |")  # fmt: skip
    search = summary([ms / 1000 for ms in search_ms])
    print(f"| of which the search call itself (fake SearXNG) | {search['p50'] * 1000:.1f} | {search['p99'] * 1000:.1f} "
          f"| {search['mean'] * 1000:.1f} |")  # fmt: skip
    answers, calls, rows, failed = (int(x) for x in stored)
    mean_calls = sum(calls_per_answer) / len(calls_per_answer)
    print(f"\nTool case ({len(calls_per_answer)} mixed questions): **{mean_calls:.2f} tool calls per answer** "
          f"(0 for small talk, 1 for news, 2 for a named page); over the whole run {answers} answers, {calls} tool "
          f"calls ({failed} failed), {rows} ledger rows, one per model call.")  # fmt: skip


if __name__ == "__main__":
    main()
