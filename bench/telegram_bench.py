"""Benchmarks 1 and 2: Jarvis's `runbot` against the dict-history baseline, through the fake servers.

1. Overhead per message (instant model): update available -> final answer at the fake Bot API, p50/p99, in
   fresh conversations and deep in a long one; and the bot's CPU time per message.
2. Concurrency: N chats send one message at once to a 2 s model; time until all have answers / 2 s, and the
   bot's peak memory.

Beside Jarvis and the baseline runs the floor, bench/null_bot.py: raw aiohttp, no framework, no SDK. What it
gets is what the fake servers and the machine allow any bot.
"""

from __future__ import annotations

import argparse
import itertools
import time

from harness import (
    AnswerWatch,
    BotProcess,
    fakes,
    scratch_database,
    summary,
)

_chat_ids = itertools.count(10_000)


def one_message(bot: BotProcess, watch: AnswerWatch, chat_id: int, text: str) -> float:
    pushed = time.time()
    bot.telegram.push_text(bot.token, chat_id, text, user_id=chat_id % 1_000_000 + 1)
    arrived = watch.wait({chat_id: f"Echo: {text}"}, timeout=30)
    return arrived[chat_id] - pushed


KINDS = ("jarvis", "baseline", "null")


def overhead(samples: int, depth: int) -> list[tuple[str, float, float, float, float]]:
    """Rows of (figure, jarvis, baseline, ratio, floor) for the per-message overhead."""
    with scratch_database() as scratch, fakes(model_delay=0.0) as (telegram, openai):
        bots = {kind: BotProcess(kind, scratch, telegram, openai) for kind in KINDS}
        try:
            for bot in bots.values():
                bot.wait_ready()
            watches = {kind: AnswerWatch(telegram, bot.token) for kind, bot in bots.items()}
            fresh: dict[str, list[float]] = {kind: [] for kind in bots}
            deep: dict[str, list[float]] = {kind: [] for kind in bots}
            # Warm-up: imports, connection pools, first queries.
            for kind, bot in bots.items():
                for i in range(5):
                    one_message(bot, watches[kind], next(_chat_ids), f"warm {i}")
            # Fresh conversations, the bots taking turns so that machine noise hits them alike.
            # CPU over the whole phase: the other bot's turns cost an idle long poll next to nothing.
            cpu = {kind: -bot.cpu_seconds() for kind, bot in bots.items()}
            for i in range(samples):
                for kind, bot in bots.items():
                    fresh[kind].append(one_message(bot, watches[kind], next(_chat_ids), f"fresh {i}"))
            cpu = {kind: cpu[kind] + bot.cpu_seconds() for kind, bot in bots.items()}
            # A long conversation: `depth` messages (questions and answers) before measuring.
            long_chat = next(_chat_ids)
            for i in range(depth // 2 - 1):
                for kind, bot in bots.items():
                    one_message(bot, watches[kind], long_chat, f"history {i}")
            for i in range(samples):
                for kind, bot in bots.items():
                    deep[kind].append(one_message(bot, watches[kind], long_chat, f"deep {i}"))
        finally:
            for bot in bots.values():
                bot.stop()
    rows = []
    for label, data in (("message 1 (fresh chat)", fresh), (f"message {depth} of one chat", deep)):
        j, b, n = (summary(data[kind]) for kind in KINDS)
        for q in ("p50", "p99"):
            rows.append((f"{label} {q} ms", j[q] * 1000, b[q] * 1000, j[q] / b[q], n[q] * 1000))
    j_cpu, b_cpu, n_cpu = (cpu[kind] / samples * 1000 for kind in KINDS)
    rows.append(("bot CPU per message 1 (fresh chat), mean ms", j_cpu, b_cpu, j_cpu / b_cpu, n_cpu))
    j_fresh, j_deep = summary(fresh["jarvis"]), summary(deep["jarvis"])
    rows.append((f"Jarvis message {depth} / message 1 (p50)", j_deep["p50"] * 1000, j_fresh["p50"] * 1000,
                 j_deep["p50"] / j_fresh["p50"], float("nan")))  # fmt: skip
    return rows


def concurrency(chats: int, model_delay: float) -> dict[str, tuple[float, float]]:
    """For each bot: (time for all `chats` answers / model_delay, peak RSS MB)."""
    results = {}
    for kind in KINDS:
        with scratch_database() as scratch, fakes(model_delay=model_delay) as (telegram, openai):
            bot = BotProcess(kind, scratch, telegram, openai)
            try:
                bot.wait_ready()
                watch = AnswerWatch(telegram, bot.token)
                one_message(bot, watch, next(_chat_ids), "warm")
                expected = {}
                start = time.time()
                for i in range(chats):
                    chat_id = next(_chat_ids)
                    expected[chat_id] = f"Echo: burst {i}"
                    telegram.push_text(bot.token, chat_id, f"burst {i}", user_id=chat_id)
                arrived = watch.wait(expected, timeout=60 + chats * 0.5)
                elapsed = max(arrived.values()) - start
                results[kind] = (elapsed / model_delay, bot.peak_rss_mb())
            finally:
                bot.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=50, help="messages measured per case and bot")
    parser.add_argument("--depth", type=int, default=1000, help="position in the long chat that is measured")
    parser.add_argument("--chats", type=int, nargs="*", default=[100, 300, 1000])
    parser.add_argument("--model-delay", type=float, default=2.0)
    args = parser.parse_args()

    print("\n## 1. Overhead per message (fake model answers instantly)\n")
    print("| figure | Jarvis | baseline | ratio | floor |\n|---|---:|---:|---:|---:|")
    for label, jarvis, baseline, ratio, floor in overhead(args.samples, args.depth):
        print(f"| {label} | {jarvis:.1f} | {baseline:.1f} | {ratio:.2f} | {floor:.1f} |")

    print(f"\n## 2. Concurrency (each chat sends one message at once; model takes {args.model_delay:g} s)\n")
    print("| chats | Jarvis time / model time | baseline | floor | Jarvis peak RSS MB | baseline peak RSS MB |")
    print("|---:|---:|---:|---:|---:|---:|")
    for chats in args.chats:
        result = concurrency(chats, args.model_delay)
        (jr, jm), (br, bm), (nr, _nm) = (result[kind] for kind in KINDS)
        print(f"| {chats} | {jr:.2f} | {br:.2f} | {nr:.2f} | {jm:.0f} | {bm:.0f} |", flush=True)


if __name__ == "__main__":
    main()
