"""WSGI entry point (the admin works under WSGI; streaming answers need ASGI)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "jarvis_site.settings")

application = get_wsgi_application()
