"""URL routes of the Jarvis site."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from botapp.telegram.webhook import telegram_webhook
from botapp.web.security import with_csp

urlpatterns = [
    path("admin/", admin.site.urls),
    path(
        "accounts/login/",
        with_csp(auth_views.LoginView.as_view(redirect_authenticated_user=True)),
        name="login",
    ),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    # Password change and reset: Django's views, with the page's own templates (the admin keeps its own).
    path(
        "accounts/password/change/",
        with_csp(auth_views.PasswordChangeView.as_view(template_name="registration/password_change.html")),
        name="password_change",
    ),
    path(
        "accounts/password/change/done/",
        with_csp(auth_views.PasswordChangeDoneView.as_view(template_name="registration/password_changed.html")),
        name="password_change_done",
    ),
    path(
        "accounts/password/reset/",
        with_csp(
            auth_views.PasswordResetView.as_view(
                template_name="registration/reset_request.html",
                email_template_name="registration/reset_email.txt",
                subject_template_name="registration/reset_subject.txt",
            )
        ),
        name="password_reset",
    ),
    path(
        "accounts/password/reset/sent/",
        with_csp(auth_views.PasswordResetDoneView.as_view(template_name="registration/reset_sent.html")),
        name="password_reset_done",
    ),
    path(
        "accounts/password/reset/<uidb64>/<token>/",
        with_csp(auth_views.PasswordResetConfirmView.as_view(template_name="registration/reset_confirm.html")),
        name="password_reset_confirm",
    ),
    path(
        "accounts/password/reset/done/",
        with_csp(auth_views.PasswordResetCompleteView.as_view(template_name="registration/reset_done.html")),
        name="password_reset_complete",
    ),
    path("telegram/webhook/<int:bot_id>/", telegram_webhook, name="telegram-webhook"),
    path("", include("botapp.web.urls")),
]
