"""URL routes of the Jarvis site."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from botapp.telegram.webhook import telegram_webhook
from botapp.web.views import with_csp

urlpatterns = [
    path("admin/", admin.site.urls),
    path(
        "accounts/login/",
        with_csp(auth_views.LoginView.as_view(redirect_authenticated_user=True)),
        name="login",
    ),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("telegram/webhook/<int:bot_id>/", telegram_webhook, name="telegram-webhook"),
    path("", include("botapp.web.urls")),
]
