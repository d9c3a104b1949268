"""Bot API calls per streamed answer: native drafts in private chats against edited messages, before and after.

    .venv/bin/python bench/telegram_calls.py [--before /path/to/an/older/checkout] [--answers 5]

The real `manage.py runbot` answers through the fake Bot API and the fake model, which streams an answer of
about 1,300 characters over about six seconds (12 characters every 50 ms, a fast model). Every Bot API call in
the answer's chat is counted, by method. Cases: this checkout against a Bot API server with drafts (private
chat, group) and against one without (private chat); and, with --before, the older checkout (which edits a
message everywhere) against the server with drafts. Prints a Markdown table: calls per answer.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import ROOT, Behaviour, FakeOpenAI, FakeTelegram, Scratch

TOKEN = "444444:calls-bench-token-0000000000000000000"
USERNAME = "jarvis_calls_bench_bot"
ANSWER = " ".join(f"Word{i} of a long answer," for i in range(60)) + " the end."
METHODS = ["sendChatAction", "sendMessageDraft", "sendMessage", "editMessageText"]
_chat_ids = itertools.count(70_000)


def run_case(label: str, tree: Path, *, drafts: bool, group: bool, answers: int) -> dict[str, float]:
    """Calls per answer, by method, for `answers` answers in fresh chats of one kind."""
    with tempfile.TemporaryDirectory(prefix="jarvis-calls-") as directory:
        scratch = Scratch(Path(directory), f"sqlite:///{directory}/calls.sqlite3")
        # The tree's own schema: an older checkout runs with the migrations it knows.
        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=tree,
                       env=scratch.env(PYTHONPATH=str(tree)), check=True)  # fmt: skip
        telegram = FakeTelegram(tokens=[TOKEN], drafts=drafts).start()
        telegram.add_bot(TOKEN, username=USERNAME)
        openai = FakeOpenAI().start()
        openai.default = Behaviour(text=ANSWER, chunk_chars=12, chunk_delay=0.05)
        env = scratch.env(
            PYTHONPATH=str(tree),
            TELEGRAM_BOT_TOKEN=TOKEN,
            TELEGRAM_API_BASE_URL=telegram.root_url,
            TELEGRAM_ALLOWED_USERS="*",
            OPENAI_API_KEY="sk-bench",
            OPENAI_BASE_URL=openai.base_url,
        )
        log = open(scratch.directory / "bot.log", "w")
        bot = subprocess.Popen([sys.executable, "manage.py", "runbot"], cwd=tree, env=env, stdout=log,
                               stderr=subprocess.STDOUT)  # fmt: skip
        try:
            telegram.wait_for(lambda: telegram.calls("getUpdates", token=TOKEN), timeout=60)
            counts: collections.Counter[str] = collections.Counter()
            for _ in range(answers):
                chat = -next(_chat_ids) if group else next(_chat_ids)
                text = f"@{USERNAME} tell me" if group else "Tell me"
                telegram.push_text(TOKEN, chat, text, user_id=abs(chat))
                telegram.wait_for(
                    lambda chat=chat: any(m.text == ANSWER for m in telegram.messages(TOKEN, chat)), timeout=60
                )
                time.sleep(1.0)  # nothing more is due; anything late would still be counted
                counts.update(c.method for c in telegram.calls(token=TOKEN) if c.chat_id == chat)
        finally:
            bot.terminate()
            bot.wait(15)
            log.close()
            openai.stop()
            telegram.stop()
    return {method: counts[method] / answers for method in METHODS} | {"label": label}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="an older checkout to measure as well")
    parser.add_argument("--answers", type=int, default=5)
    args = parser.parse_args()
    cases = [
        ("this tree, private chat", ROOT, True, False),
        ("this tree, group", ROOT, True, True),
        ("this tree, private chat, server without drafts", ROOT, False, False),
    ]
    if args.before:
        cases += [
            ("before, private chat", args.before, True, False),
            ("before, group", args.before, True, True),
        ]
    rows = [
        run_case(label, tree, drafts=drafts, group=group, answers=args.answers) for label, tree, drafts, group in cases
    ]
    print(f"Bot API calls per answer ({len(ANSWER):,} characters streamed over about 6 s; mean of {args.answers}):")
    print()
    print("| case | " + " | ".join(METHODS) + " | total |")
    print("|---|" + "---:|" * (len(METHODS) + 1))
    for row in rows:
        total = sum(row[method] for method in METHODS)
        print(f"| {row['label']} | " + " | ".join(f"{row[m]:.1f}" for m in METHODS) + f" | {total:.1f} |")


if __name__ == "__main__":
    main()
