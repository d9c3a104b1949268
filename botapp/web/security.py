"""The site's Content-Security-Policy (pages, admin, files) and sign-in throttling (django-axes: backend, lockout)."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache, wraps
from typing import Any

from axes.backends import AxesStandaloneBackend
from django.conf import settings
from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils.deprecation import MiddlewareMixin

# Defence in depth behind the sanitizer: no inline script or style runs even if markup slipped through.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
# A stored picture or recording opened on its own: nothing in it may run or load anything.
MEDIA_CONTENT_SECURITY_POLICY = "default-src 'none'; sandbox"

View = Callable[..., HttpResponse]


def with_csp(view: View) -> View:
    """Send the page with the Content-Security-Policy above."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response = view(request, *args, **kwargs)
        response.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        return response

    return wrapped


@cache
def _admin_prefix() -> str:
    return reverse("admin:index")


class AdminContentSecurityPolicyMiddleware(MiddlewareMixin):
    """Sends the chat page's Content-Security-Policy with every admin page.

    Django's admin (5.2) needs no inline script or style, and Jarvis's admin templates keep theirs in
    static files, so the policy needs no exception.
    """

    def process_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        if request.path.startswith(_admin_prefix()):
            response.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        return response


class SignInThrottleBackend(AxesStandaloneBackend):
    """django-axes' lockout check for every sign-in that comes with a request (both login pages).

    `authenticate()` called without a request (a script, the shell) is no login page and has no address to
    count by: it goes on to the next backend, as it did before throttling, instead of raising.
    """

    def authenticate(
        self, request: HttpRequest | None, username: str | None = None, password: str | None = None, **kwargs: Any
    ) -> None:
        if request is None:
            return None
        return super().authenticate(request, username, password, **kwargs)


def login_locked_out(
    request: HttpRequest, original_response: object = None, credentials: object = None
) -> HttpResponse:
    """AXES_LOCKOUT_CALLABLE: too many failed sign-ins. Says what happened, how long to wait and who can help.

    Shown in the admin's style on the admin's login page and in the site's style elsewhere, with HTTP 429
    and Retry-After.
    """
    seconds = int(settings.AXES_COOLOFF_TIME.total_seconds())
    context = {"minutes": max(seconds // 60, 1)}
    if request.path.startswith(_admin_prefix()):
        context |= {**admin.site.each_context(request), "title": ""}
        template = "admin/locked_out.html"
    else:
        template = "registration/locked_out.html"
    response = render(request, template, context, status=429)
    response["Retry-After"] = str(seconds)
    response["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return response
