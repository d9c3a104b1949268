"""The periodic jobs as django-q2 schedules: created once by name, then the admin's to see and edit."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, time, timedelta

from django.db import transaction
from django.utils import timezone
from django_q.models import Schedule

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Periodic:
    """A job that runs every day at a local time."""

    name: str
    func: str
    at: time


PERIODIC = (
    Periodic(name="Daily spend report", func="botapp.tasks.spend_report_send", at=time(8, 0)),
    Periodic(name="Message retention", func="botapp.tasks.messages_retention", at=time(3, 30)),
)


def next_local(at: time, *, now: datetime | None = None) -> datetime:
    """The next moment the server's clock shows `at` (today if still ahead, else tomorrow)."""
    now = timezone.localtime(now or timezone.now())
    candidate = timezone.make_aware(datetime.combine(now.date(), at), timezone.get_current_timezone())
    return candidate if candidate > now else candidate + timedelta(days=1)


def schedules_ensure() -> list[tuple[str, bool]]:
    """Create the missing periodic schedules; returns (name, created) for each.

    Found by name, so running it at every start is safe. An existing schedule keeps what an admin set
    (time, type, repeats); only a function path that no longer matches the code is corrected.
    """
    results = []
    with transaction.atomic():
        for job in PERIODIC:
            schedule = Schedule.objects.filter(name=job.name).first()
            if schedule is None:
                Schedule.objects.create(
                    name=job.name,
                    func=job.func,
                    schedule_type=Schedule.DAILY,
                    repeats=-1,
                    next_run=next_local(job.at),
                )
                logger.debug("Created the schedule %r", job.name)
                results.append((job.name, True))
                continue
            if schedule.func != job.func:
                schedule.func = job.func
                schedule.save(update_fields=["func"])
            results.append((job.name, False))
    return results
