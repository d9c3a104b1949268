"""App configuration for Jarvis's core app."""

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class BotappConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "botapp"
    verbose_name = _("Jarvis")

    def ready(self) -> None:
        from django.db.models.signals import pre_save
        from django_q.models import Failure, Success, Task

        # Connects the signal that deletes a generated file with its row.
        # Connects the signal that takes a deleted conversation's messages out of the search index.
        from botapp import (
            media,  # noqa: F401
            search,  # noqa: F401
        )
        from botapp.redaction import task_record_redact

        # Senders are exact classes: the proxies are connected too, for a record saved through one of them.
        for model in (Task, Success, Failure):
            pre_save.connect(task_record_redact, sender=model, dispatch_uid=f"jarvis-redact-{model.__name__}")
