"""Views of a person's own account: signing in from Telegram, linking it, invitations, sign-up, name and password."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login, update_session_auth_hash
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import SetPasswordForm
from django.contrib.auth.models import AbstractBaseUser
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_http_methods

from botapp.accounts import AccountError, account_create, invitation_for
from botapp.accounts import invitation_accept as invitation_use
from botapp.linking import LinkError, link_code_redeem, web_sign_in_link_check, web_sign_in_link_redeem
from botapp.models import TelegramIdentity
from botapp.web.forms import AccountForm, LinkCodeForm, SignUpForm
from botapp.web.security import with_csp

# Accounts made here sign in with a password; the one backend that checks passwords signs them in.
BACKEND = "django.contrib.auth.backends.ModelBackend"


def _sign_in(request: HttpRequest, user: AbstractBaseUser) -> None:
    login(request, user, backend=BACKEND)


def _welcome(request: HttpRequest, user: AbstractBaseUser) -> HttpResponse:
    """A new account is signed in and sent to its first conversation."""
    _sign_in(request, user)
    messages.success(request, _("Welcome to Jarvis, %(name)s.") % {"name": user.get_username()})
    return redirect("web:home")


@with_csp
@require_http_methods(["GET", "POST"])
def telegram_sign_in(request: HttpRequest, token: str) -> HttpResponse:
    """The link /web sends: shown first (link previews open it too), used up by the button that signs in."""
    try:
        identity = web_sign_in_link_check(token=token)
    except LinkError as exc:
        return render(request, "registration/telegram_sign_in.html", {"error": str(exc)}, status=410)
    current = request.user if request.user.is_authenticated else None
    if current is not None and current.pk == identity.user_id:
        return redirect("web:home")
    may_link = current is not None and not TelegramIdentity.objects.filter(user=current).exists()
    if request.method == "POST":
        link_to = current if may_link and request.POST.get("action") == "link" else None
        try:
            user = web_sign_in_link_redeem(token=token, link_to=link_to)
        except LinkError as exc:
            return render(request, "registration/telegram_sign_in.html", {"error": str(exc)}, status=410)
        _sign_in(request, user)
        if link_to is not None:
            messages.success(
                request,
                _("Your Telegram account %(account)s is linked: its conversations are now in your list.")
                % {"account": identity},
            )
        elif not user.has_usable_password():
            messages.success(
                request,
                _("Welcome, %(name)s. To sign in without Telegram too, set a password on your account page.")
                % {"name": identity.first_name or identity},
            )
        return redirect("web:home")
    context = {"identity": identity, "current": current, "may_link": may_link}
    return render(request, "registration/telegram_sign_in.html", context)


@with_csp
@require_http_methods(["GET", "POST"])
def invitation_accept(request: HttpRequest, token: str) -> HttpResponse:
    """An admin's invitation: choose a username and password, and the account exists."""
    try:
        invitation = invitation_for(token=token)
    except AccountError as exc:
        return render(request, "registration/signup.html", {"error": str(exc)}, status=410)
    form = SignUpForm(request.POST or None, initial={"email": invitation.email})
    if request.method == "POST" and form.is_valid():
        try:
            user = invitation_use(
                token=token,
                username=form.cleaned_data["username"],
                email=form.cleaned_data["email"],
                password=form.cleaned_data["password1"],
            )
        except AccountError as exc:
            return render(request, "registration/signup.html", {"error": str(exc)}, status=410)
        return _welcome(request, user)
    return render(request, "registration/signup.html", {"form": form, "invited": True})


@with_csp
@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    """Anyone may make an account when SIGNUP_OPEN is on; otherwise the page says how else to get in."""
    if not settings.SIGNUP_OPEN:
        return render(request, "registration/signup.html", {"closed": True}, status=404)
    if request.user.is_authenticated:
        return redirect("web:home")
    form = SignUpForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = account_create(
            username=form.cleaned_data["username"],
            email=form.cleaned_data["email"],
            password=form.cleaned_data["password1"],
        )
        return _welcome(request, user)
    return render(request, "registration/signup.html", {"form": form})


@with_csp
@login_required
@require_http_methods(["GET", "POST"])
def account(request: HttpRequest) -> HttpResponse:
    """One's own name and email; a password for an account made from Telegram, or a link to change it."""
    user = request.user
    details = AccountForm(request.POST if "details" in request.POST else None, instance=user)
    password = None
    if not user.has_usable_password():
        password = SetPasswordForm(user, request.POST if "password" in request.POST else None)
    if details.is_bound and details.is_valid():
        details.save()
        messages.success(request, _("Your account details are saved."))
        return redirect("web:account")
    if password is not None and password.is_bound and password.is_valid():
        password.save()
        update_session_auth_hash(request, user)
        messages.success(request, _("Your password is set: you can now sign in with your username and password."))
        return redirect("web:account")
    identity = TelegramIdentity.objects.filter(user=user).first()
    context = {"nav": "account", "details": details, "password": password, "identity": identity}
    return render(request, "botapp/account.html", context)


@with_csp
@login_required
def link_telegram(request: HttpRequest) -> HttpResponse:
    """Enter the one-time code that /link in Telegram gives, to see Telegram conversations here too."""
    form = LinkCodeForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            identity = link_code_redeem(code=form.cleaned_data["code"], user=request.user)
        except LinkError as exc:
            form.add_error("code", str(exc))
        else:
            messages.success(
                request,
                _("Your Telegram account %(account)s is linked: its conversations are now in your list.")
                % {"account": identity},
            )
            return redirect("web:home")
    identity = TelegramIdentity.objects.filter(user=request.user).first()
    return render(request, "botapp/link.html", {"nav": "link", "form": form, "identity": identity})
