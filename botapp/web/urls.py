"""Routes of the browser chat page and of the person's own account."""

from django.urls import path

from botapp.web import accounts
from botapp.web.views import conversations, documents, media, stream, usage

app_name = "web"

urlpatterns = [
    path("", conversations.home, name="home"),
    path("c/new/", conversations.conversation_create, name="conversation_create"),
    path("c/new/send/", stream.conversation_start_send, name="start_send"),
    path("search/", conversations.conversation_search, name="search"),
    path("c/<int:pk>/", conversations.conversation_detail, name="conversation"),
    path("c/<int:pk>/send/", stream.message_send, name="send"),
    path("c/<int:pk>/image/", media.image_send, name="image"),
    path("m/<int:pk>/speech/", media.message_speech, name="speech"),
    path("media/<int:pk>/", media.media_file, name="media"),
    path("c/<int:pk>/regenerate/", stream.answer_regenerate, name="regenerate"),
    path("c/<int:pk>/m/<int:message_id>/edit/", stream.message_edit, name="edit"),
    path("c/<int:pk>/title/", conversations.conversation_title, name="title"),
    path("c/<int:pk>/rename/", conversations.conversation_rename_view, name="rename"),
    path("c/<int:pk>/persona/", conversations.conversation_persona_view, name="persona"),
    path("c/<int:pk>/model/", conversations.conversation_model_view, name="model"),
    path("c/<int:pk>/delete/", conversations.conversation_delete_view, name="delete"),
    path("c/<int:pk>/export.<str:fmt>", conversations.conversation_export, name="export"),
    path("c/<int:pk>/documents/", documents.document_upload, name="documents"),
    path("c/<int:pk>/documents/<int:document_id>/", documents.document_status, name="document"),
    path("usage/", usage.usage, name="usage"),
    path("link/", accounts.link_telegram, name="link"),
    path("account/", accounts.account, name="account"),
    path("accounts/telegram/<str:token>/", accounts.telegram_sign_in, name="telegram_sign_in"),
    path("accounts/invite/<str:token>/", accounts.invitation_accept, name="invitation"),
    path("accounts/signup/", accounts.signup, name="signup"),
    path("favicon.ico", conversations.favicon, name="favicon"),
]
