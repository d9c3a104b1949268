"""Benchmark: scale-out in webhook mode, shown rather than claimed.

The web app (uvicorn) takes the updates Telegram would post to the webhook and queues them on the Redis broker;
django-q2 workers (`manage.py worker`) answer them through the fake Bot API, the fake model answering at once so
that the work is CPU bound. The same N updates (each in its own chat) go to a cluster of 1 worker process, then
of 2: answered messages per second for each, and the ratio. Everything runs on this machine, so the web
process, the fakes, Redis and the database take their share of the same cores as the workers.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

from harness import JARVIS_TOKEN, ROOT, AnswerWatch, Scratch, fakes, postgres_database, scratch_database

from tests.fakes.telegram_server import FakeTelegram

WEBHOOK_SECRET = "webhook-bench-secret-0123456789abcdef"
# A Redis database of the bench's own: jobs the answers queue (titles, summaries) and the workers did not reach
# before they stopped are cleared from it, so that the next run starts with an empty queue.
BENCH_REDIS_URL = "redis://127.0.0.1:6379/11"
QUEUE_KEY = "django_q:jarvis:q"
_chat_ids = itertools.count(50_000)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _bot_create(env: dict[str, str]) -> tuple[int, str]:
    """The bot in the scratch database: its id and the secret Telegram would send for it."""
    script = (
        "from botapp.models import AccessPolicy, Bot\n"
        "from botapp.telegram.webhook import webhook_secret\n"
        "bot = Bot(name='webhook-bench', access_policy=AccessPolicy.OPEN)\n"
        f"bot.token = {JARVIS_TOKEN!r}\n"
        "bot.save()\n"
        "print(bot.pk, webhook_secret(bot.pk))\n"
    )
    out = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", script],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return int(out[-2]), out[-1]


class Cluster:
    """`manage.py worker` with Q_WORKERS worker processes; stopped with its whole process tree."""

    def __init__(self, env: dict[str, str], workers: int, log: str) -> None:
        self.log = open(log, "w")
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "worker"],
            cwd=ROOT,
            env={**env, "Q_WORKERS": str(workers)},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def tree_cpu(root: int) -> float:
    """CPU seconds (user + system) used so far by a process and every live descendant of it."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    family, grew = {root}, True
    while grew:
        grew = False
        for pid, (parent, _) in stats.items():
            if parent in family and pid not in family:
                family.add(pid)
                grew = True
    return sum(stats[pid][1] for pid in family if pid in stats) / os.sysconf("SC_CLK_TCK")


def _post(url: str, secret: str, update: dict) -> int:
    request = urllib.request.Request(  # noqa: S310 - a local http URL
        url,
        data=json.dumps(update).encode(),
        headers={"Content-Type": "application/json", "X-Telegram-Bot-Api-Secret-Token": secret},
    )
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
        return response.status


def _updates(telegram: FakeTelegram, count: int, label: str) -> tuple[list[dict], dict[int, str]]:
    """`count` updates, each in a new chat, and the answer each chat should get."""
    updates, answers = [], {}
    for i in range(count):
        chat = next(_chat_ids)
        updates.append(telegram.push_text(JARVIS_TOKEN, chat, f"{label} {i}", user_id=chat))
        answers[chat] = f"Echo: {label} {i}"
    return updates, answers


def _post_all(url: str, secret: str, updates: list[dict]) -> None:
    """Post the updates 16 at a time, as Telegram's connections to a webhook would."""
    with ThreadPoolExecutor(16) as pool:
        statuses = set(pool.map(lambda update: _post(url, secret, update), updates))
    if statuses != {200}:
        raise SystemExit(f"The webhook refused updates: {sorted(statuses)}")


def run(workers: int, count: int, scratch: Scratch, telegram: FakeTelegram, env: dict[str, str], url: str,
        secret: str, web: int) -> tuple[float, float, float]:  # fmt: skip
    """Messages answered per second by a cluster of `workers` processes; its CPU and the web's, ms a message."""
    watch = AnswerWatch(telegram, JARVIS_TOKEN)
    cluster = Cluster(env, workers, str(scratch.directory / f"worker-{workers}.log"))
    try:
        # Warm-up: every worker process imports, connects and builds its Application before the clock starts.
        updates, answers = _updates(telegram, 10 * workers, f"warm{workers}")
        _post_all(url, secret, updates)
        watch.wait(answers, timeout=180)
        updates, answers = _updates(telegram, count, f"run{workers}")
        cpu = tree_cpu(cluster.process.pid), tree_cpu(web)
        start = time.time()
        _post_all(url, secret, updates)
        arrived = watch.wait(answers, timeout=120 + count)
        rate = count / (max(arrived.values()) - start)
        time.sleep(1)  # the workers finish writing down what they sent
        worker_cpu = (tree_cpu(cluster.process.pid) - cpu[0]) / count * 1000
        return rate, worker_cpu, (tree_cpu(web) - cpu[1]) / count * 1000
    finally:
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--redis-url", default=BENCH_REDIS_URL, help="cleared of django-q2's queue only if the default")
    parser.add_argument("--database-url", help="a PostgreSQL server URL; a fresh database is made on it")
    args = parser.parse_args()

    with ExitStack() as stack:
        if args.redis_url == BENCH_REDIS_URL:
            import redis

            queue = redis.Redis.from_url(args.redis_url)
            queue.delete(QUEUE_KEY)
            stack.callback(queue.delete, QUEUE_KEY)
        url = stack.enter_context(postgres_database(args.database_url)) if args.database_url else None
        scratch = stack.enter_context(scratch_database(url))
        telegram, openai = stack.enter_context(fakes(model_delay=0.0))
        env = scratch.env(
            REDIS_URL=args.redis_url,
            TELEGRAM_WEBHOOK_SECRET=WEBHOOK_SECRET,
            TELEGRAM_API_BASE_URL=telegram.root_url,
            OPENAI_API_KEY="sk-bench",
            OPENAI_BASE_URL=openai.base_url,
            DJANGO_ALLOWED_HOSTS="127.0.0.1",
        )
        bot_id, secret = _bot_create(env)
        port = free_port()
        web = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "jarvis_site.asgi:application", "--port", str(port), "--log-level",
             "warning", "--lifespan", "off"],
            cwd=ROOT, env=env,
        )  # fmt: skip
        stack.callback(lambda: (web.terminate(), web.wait(10)))
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                urllib.request.urlopen(base + "/", timeout=5)  # noqa: S310
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                time.sleep(0.1)
        url = f"{base}/telegram/webhook/{bot_id}/"
        results = {n: run(n, args.messages, scratch, telegram, env, url, secret, web.pid) for n in (1, 2)}

    database = "PostgreSQL" if args.database_url else "SQLite"
    print(f"\n## Webhook scale-out ({database}, Redis broker, instant model, {args.messages} messages)\n")
    print("| worker processes | answered messages / s | worker CPU ms / message | web CPU ms / message |")
    print("|---:|---:|---:|---:|")
    for workers, (rate, worker_cpu, web_cpu) in results.items():
        print(f"| {workers} | {rate:.1f} | {worker_cpu:.1f} | {web_cpu:.1f} |")
    ratio = results[2][0] / results[1][0]
    print(f"\n2 workers ÷ 1 worker: **{ratio:.2f}** (target ≥ 1.7; {os.cpu_count()} cores on this machine)")


if __name__ == "__main__":
    main()
