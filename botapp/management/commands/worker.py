"""`manage.py worker`: django-q2's cluster (`qcluster`), stopping cleanly when its whole process group is signalled.

honcho (`./jarvis up`, Ctrl-C) stops a process by signalling its process group. django-q2's sentinel and
workers are in that group too: they die in the middle of the master's orderly stop, and the master then waits
for them forever, until honcho kills it. Here the sentinel (and so every worker it starts) gets a process
group of its own: only the master hears the signal, and it stops them in order. Should the master disappear
without stopping them, the sentinel notices and stops the cluster itself.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from django_q import cluster
from django_q.management.commands import qcluster

# How often the sentinel looks whether the master that started it is still there.
MASTER_CHECK_SECONDS = 1.0
_Sentinel = cluster.Sentinel


def sentinel_in_own_group(
    stop_event: Any, start_event: Any, cluster_id: Any, broker: Any = None, timeout: Any = None
) -> None:
    """django-q2's sentinel in a process group of its own, stopping the cluster if its master goes away."""
    os.setpgid(0, 0)
    master = os.getppid()

    def watch() -> None:
        while not stop_event.wait(MASTER_CHECK_SECONDS):
            if os.getppid() != master:
                stop_event.set()

    threading.Thread(target=watch, name="master-watch", daemon=True).start()
    _Sentinel(stop_event, start_event, cluster_id, broker, timeout)


class Command(qcluster.Command):
    help = "Run the background workers (django-q2's qcluster); Ctrl-C or SIGTERM stops them cleanly."

    def handle(self, *args: Any, **options: Any) -> None:
        # The cluster looks its sentinel up by this name when it starts it.
        cluster.Sentinel = sentinel_in_own_group
        try:
            super().handle(*args, **options)
        finally:
            cluster.Sentinel = _Sentinel
