"""App configuration for Jarvis's core app."""

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class BotappConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "botapp"
    verbose_name = _("Jarvis")

    def ready(self) -> None:
        # Connects the signal that deletes a generated file with its row.
        from botapp import media  # noqa: F401
