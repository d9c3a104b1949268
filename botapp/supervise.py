"""A small supervisor for `runbot --processes N`, run as a script of its own so that it holds no Django.

`runbot` lists the bots, then replaces itself (same process id, for the process manager) with this script,
which starts one `runbot --share I/N` per share and watches them: SIGTERM or Ctrl-C is passed on to each
child once; when a child exits by itself the others are stopped and the script exits with status 1, for the
process manager to restart the whole set. Only the standard library: loading Django here would cost the
supervisor as much memory as a bot process (about 110 MB) for waiting.

    python botapp/supervise.py COUNT -- COMMAND...   (each child runs COMMAND --share I/COUNT)
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from types import FrameType


def _say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def supervise(count: int, command: list[str]) -> int:
    _say(f"Sharing the bots among {count} processes.")
    # Each child in its own session: a terminal's Ctrl-C reaches this process, which passes it on once.
    children = [subprocess.Popen([*command, "--share", f"{i}/{count}"], start_new_session=True) for i in range(count)]
    stopping = False

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while all(child.poll() is None for child in children):
        time.sleep(0.2)
    asked = stopping
    if not asked:
        stop(signal.SIGTERM, None)
    codes = [child.wait() for child in children]
    if not asked:
        _say(f"A bot process exited by itself (exit statuses {codes}); the others were stopped.")
        return 1
    if any(codes):
        _say(f"A bot process did not stop cleanly (exit statuses {codes}).")
        return 1
    return 0


if __name__ == "__main__":
    separator = sys.argv.index("--")
    sys.exit(supervise(int(sys.argv[1]), sys.argv[separator + 1 :]))
