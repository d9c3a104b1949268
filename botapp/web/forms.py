"""Forms of the browser chat page."""

from __future__ import annotations

from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import UserCreationForm
from django.utils.translation import gettext_lazy as _

from botapp.models import Conversation
from botapp.selectors import personas_offered


class PersonaChoiceField(forms.ModelChoiceField):
    def __init__(self, **kwargs: object) -> None:
        super().__init__(queryset=personas_offered(), label=_("Persona"), empty_label=None, **kwargs)


class ConversationCreateForm(forms.Form):
    # Empty: the default persona (the site's).
    persona = PersonaChoiceField(required=False)


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


class SignUpForm(UserCreationForm):
    """A new web account: a username, an email (to reset a forgotten password) and a password, twice."""

    email = forms.EmailField(
        label=_("Email"),
        required=False,
        help_text=_("Optional; needed to reset a forgotten password."),
        widget=forms.EmailInput(attrs={"autocomplete": "email"}),
    )

    class Meta(UserCreationForm.Meta):
        model = get_user_model()
        fields = ("username", "email")


class AccountForm(forms.ModelForm):
    """The name one signs in with and the email a password reset goes to."""

    class Meta:
        model = get_user_model()
        fields = ("username", "email")
        help_texts = {"email": _("Needed to reset a forgotten password.")}
