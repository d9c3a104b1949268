"""Forms of the browser chat page."""

from __future__ import annotations

from django import forms
from django.utils.translation import gettext_lazy as _

from botapp.models import Conversation
from botapp.selectors import personas_offered


class PersonaChoiceField(forms.ModelChoiceField):
    def __init__(self, **kwargs: object) -> None:
        super().__init__(queryset=personas_offered(), label=_("Persona"), empty_label=None, **kwargs)


class ConversationCreateForm(forms.Form):
    persona = PersonaChoiceField()


class ConversationPersonaForm(forms.Form):
    persona = PersonaChoiceField()


class ConversationRenameForm(forms.Form):
    title = forms.CharField(
        label=_("Title"), max_length=Conversation._meta.get_field("title").max_length, required=False
    )


class LinkCodeForm(forms.Form):
    code = forms.CharField(
        label=_("Code from Telegram"),
        max_length=32,
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "autocapitalize": "characters"}),
    )
