"""Routes of the browser chat page and of the person's own account."""

from django.urls import path

from botapp.web import accounts, views

app_name = "web"

urlpatterns = [
    path("", views.home, name="home"),
    path("c/new/", views.conversation_create, name="conversation_create"),
    path("c/new/send/", views.conversation_start_send, name="start_send"),
    path("search/", views.conversation_search, name="search"),
    path("c/<int:pk>/", views.conversation_detail, name="conversation"),
    path("c/<int:pk>/send/", views.message_send, name="send"),
    path("c/<int:pk>/image/", views.image_send, name="image"),
    path("m/<int:pk>/speech/", views.message_speech, name="speech"),
    path("media/<int:pk>/", views.media_file, name="media"),
    path("c/<int:pk>/regenerate/", views.answer_regenerate, name="regenerate"),
    path("c/<int:pk>/m/<int:message_id>/edit/", views.message_edit, name="edit"),
    path("c/<int:pk>/title/", views.conversation_title, name="title"),
    path("c/<int:pk>/rename/", views.conversation_rename_view, name="rename"),
    path("c/<int:pk>/persona/", views.conversation_persona_view, name="persona"),
    path("c/<int:pk>/model/", views.conversation_model_view, name="model"),
    path("c/<int:pk>/delete/", views.conversation_delete_view, name="delete"),
    path("c/<int:pk>/export.<str:fmt>", views.conversation_export, name="export"),
    path("c/<int:pk>/documents/", views.document_upload, name="documents"),
    path("c/<int:pk>/documents/<int:document_id>/", views.document_status, name="document"),
    path("usage/", views.usage, name="usage"),
    path("link/", views.link_telegram, name="link"),
    path("account/", accounts.account, name="account"),
    path("accounts/telegram/<str:token>/", accounts.telegram_sign_in, name="telegram_sign_in"),
    path("accounts/invite/<str:token>/", accounts.invitation_accept, name="invitation"),
    path("accounts/signup/", accounts.signup, name="signup"),
    path("favicon.ico", views.favicon, name="favicon"),
]
