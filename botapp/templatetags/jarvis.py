"""Template helpers of the browser page."""

from __future__ import annotations

from django import template
from django.conf import settings

from botapp.models import Conversation
from botapp.web.titles import display_title

register = template.Library()


@register.filter
def conversation_title(conversation: Conversation) -> str:
    """A listed conversation's name: its title, or its first question cleaned up (see `display_title`)."""
    return display_title(conversation.title, getattr(conversation, "first_question", ""))


@register.simple_tag
def signup_open() -> bool:
    """Whether anyone may make an account (SIGNUP_OPEN), for the links under the sign-in form."""
    return settings.SIGNUP_OPEN
