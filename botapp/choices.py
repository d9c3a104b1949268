"""Switching a conversation's persona or model, on the web page and in Telegram alike: checked, then stored."""

from __future__ import annotations

from django.utils.translation import gettext as _

from botapp.models import Conversation, ModelPrice, Persona
from botapp.selectors import models_offered
from botapp.usage import format_usd


class ChoiceError(ValueError):
    """The choice is not offered; `str(error)` is the sentence to show the person."""


def conversation_persona_set(*, conversation: Conversation, persona: Persona) -> Conversation:
    """Answer as `persona` from the next message on; what was already said stays as it was."""
    if not persona.is_active:
        raise ChoiceError(_("That persona is no longer offered. Choose another one."))
    conversation.persona = persona
    conversation.save(update_fields=["persona"])
    return conversation


def conversation_model_set(*, conversation: Conversation, model: str) -> Conversation:
    """Answer with `model` from the next message on; an empty `model` goes back to the persona's model."""
    model = model.strip()
    if model and model not in {price.model for price in models_offered()}:
        raise ChoiceError(_("The model “%(model)s” is not offered. Choose one of the list.") % {"model": model})
    conversation.model = model
    conversation.save(update_fields=["model"])
    return conversation


def model_price_label(price: ModelPrice) -> str:
    """A model's price as a person reads it: “$0.15 in · $0.60 out per 1M tokens”."""
    return _("%(input)s in · %(output)s out per 1M tokens") % {
        "input": format_usd(price.input_per_mtok),
        "output": format_usd(price.output_per_mtok),
    }
