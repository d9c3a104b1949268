"""Two checkouts of Jarvis side by side: per-message latency and CPU, and concurrency, alternating in one run.

    git worktree add /tmp/before <commit>
    .venv/bin/python bench/compare.py --before /tmp/before

Both trees run `manage.py runbot` against the same fake servers (each with its own scratch database), taking
turns message by message, so that the machine's drift hits both alike.
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from harness import (
    BASELINE_TOKEN,
    JARVIS_TOKEN,
    ROOT,
    AnswerWatch,
    BotProcess,
    FakeOpenAI,
    FakeTelegram,
    Scratch,
    fakes,
    scratch_database,
    summary,
)

_chat_ids = itertools.count(50_000)


class TreeBot(BotProcess):
    """`manage.py runbot` from a given checkout."""

    def __init__(
        self, label: str, tree: Path, token: str, scratch: Scratch, telegram: FakeTelegram, openai: FakeOpenAI
    ) -> None:
        self.kind, self.token, self.telegram = label, token, telegram
        env = scratch.env(
            TELEGRAM_BOT_TOKEN=token,
            TELEGRAM_API_BASE_URL=telegram.root_url,
            TELEGRAM_ALLOWED_USERS="*",
            OPENAI_API_KEY="sk-bench",
            OPENAI_BASE_URL=openai.base_url,
            PYTHONPATH=str(tree),
        )
        self.log = open(scratch.directory / f"{label}.log", "w")
        command = [sys.executable, "manage.py", "runbot"]
        self.process = subprocess.Popen(command, cwd=tree, env=env, stdout=self.log, stderr=subprocess.STDOUT)


def one_message(bot: BotProcess, watch: AnswerWatch, chat_id: int, text: str) -> float:
    pushed = time.time()
    bot.telegram.push_text(bot.token, chat_id, text, user_id=chat_id)
    return watch.wait({chat_id: f"Echo: {text}"}, timeout=30)[chat_id] - pushed


def overhead(trees: dict[str, Path], samples: int, same_chat: bool) -> None:
    tokens = dict(zip(trees, (JARVIS_TOKEN, BASELINE_TOKEN), strict=True))
    with ExitStack() as stack:
        telegram, openai = stack.enter_context(fakes(model_delay=0.0))
        bots = {
            label: TreeBot(label, tree, tokens[label], stack.enter_context(scratch_database()), telegram, openai)
            for label, tree in trees.items()
        }
        try:
            for bot in bots.values():
                bot.wait_ready()
            watches = {label: AnswerWatch(telegram, bot.token) for label, bot in bots.items()}
            for i in range(5):
                for label, bot in bots.items():
                    one_message(bot, watches[label], next(_chat_ids), f"warm {i}")
            chats = {label: next(_chat_ids) for label in bots}
            latency: dict[str, list[float]] = {label: [] for label in bots}
            cpu = {label: -bot.cpu_seconds() for label, bot in bots.items()}
            for i in range(samples):
                for label, bot in bots.items():
                    chat = chats[label] if same_chat else next(_chat_ids)
                    latency[label].append(one_message(bot, watches[label], chat, f"m {i}"))
            case = f"{samples}-message chat" if same_chat else "fresh chat"
            for label, bot in bots.items():
                figures = summary(latency[label])
                used = (cpu[label] + bot.cpu_seconds()) / samples * 1000
                print(f"| {case} | {label} | {figures['p50'] * 1000:.1f} | {figures['p99'] * 1000:.1f} | {used:.1f} |")
        finally:
            for bot in bots.values():
                bot.stop()


def concurrency(trees: dict[str, Path], chats: int, model_delay: float) -> None:
    for label, tree in trees.items():
        with scratch_database() as scratch, fakes(model_delay=model_delay) as (telegram, openai):
            bot = TreeBot(label, tree, JARVIS_TOKEN, scratch, telegram, openai)
            try:
                bot.wait_ready()
                watch = AnswerWatch(telegram, bot.token)
                one_message(bot, watch, next(_chat_ids), "warm")
                used, expected, start = -bot.cpu_seconds(), {}, time.time()
                for i in range(chats):
                    chat_id = next(_chat_ids)
                    expected[chat_id] = f"Echo: burst {i}"
                    telegram.push_text(bot.token, chat_id, f"burst {i}", user_id=chat_id)
                arrived = watch.wait(expected, timeout=60 + chats)
                ratio = (max(arrived.values()) - start) / model_delay
                used = (used + bot.cpu_seconds()) / chats * 1000
                print(f"| {chats} chats | {label} | {ratio:.2f} | {used:.1f} | {bot.peak_rss_mb():.0f} |", flush=True)
            finally:
                bot.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="the other checkout (e.g. a git worktree)")
    parser.add_argument("--samples", type=int, default=60)
    parser.add_argument("--chats", type=int, nargs="*", default=[300, 1000])
    parser.add_argument("--model-delay", type=float, default=2.0)
    args = parser.parse_args()
    trees = {"before": args.before.resolve(), "after": ROOT}

    print("\n| case | tree | p50 ms | p99 ms | CPU per message ms |\n|---|---|---:|---:|---:|")
    overhead(trees, args.samples, same_chat=False)
    overhead(trees, args.samples, same_chat=True)
    print("\n| case | tree | time / model time | CPU per message ms | peak RSS MB |\n|---|---|---:|---:|---:|")
    for chats in args.chats:
        concurrency(trees, chats, args.model_delay)


if __name__ == "__main__":
    main()
