"""Where the web page is: absolute links for messages sent outside it (Telegram, email)."""

from __future__ import annotations

import os

from django.conf import settings


def site_url(path: str = "/") -> str:
    """`path` on the web page, from SITE_URL; without it, the address `./jarvis up` serves on this machine."""
    root = settings.SITE_URL
    if not root:
        host = os.environ.get("HOST", "127.0.0.1")
        if host in ("0.0.0.0", "::", ""):  # noqa: S104 (only an address to show, never bound)
            host = "127.0.0.1"
        root = f"http://{host}:{os.environ.get('PORT', '8000')}"
    return root.rstrip("/") + path
