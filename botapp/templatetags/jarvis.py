"""Template helpers of the browser page and the admin."""

from __future__ import annotations

from django import template
from django.conf import settings

from botapp.models import Conversation
from botapp.usage import format_usd
from botapp.web.titles import display_title

register = template.Library()


@register.filter
def conversation_title(conversation: Conversation) -> str:
    """A listed conversation's name: its title, or its first question cleaned up (see `display_title`)."""
    return display_title(conversation.title, getattr(conversation, "first_question", ""))


@register.filter
def usd(value: object) -> str:
    """Dollars the way every page, command and report shows them (`format_usd`); "-" when there is no amount."""
    return "-" if value is None or value == "" else format_usd(value)


@register.simple_tag
def signup_open() -> bool:
    """Whether anyone may make an account (SIGNUP_OPEN), for the links under the sign-in form."""
    return settings.SIGNUP_OPEN
