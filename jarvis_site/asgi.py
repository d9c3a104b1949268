"""ASGI entry point of the Jarvis web app (`uvicorn jarvis_site.asgi:application`)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "jarvis_site.settings")

application = get_asgi_application()
