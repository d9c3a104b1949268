"""Routes of the browser chat page."""

from django.urls import path

from botapp.web import views

app_name = "web"

urlpatterns = [
    path("", views.home, name="home"),
    path("c/new/", views.conversation_create, name="conversation_create"),
    path("c/<int:pk>/", views.conversation_detail, name="conversation"),
    path("c/<int:pk>/send/", views.message_send, name="send"),
    path("c/<int:pk>/image/", views.image_send, name="image"),
    path("m/<int:pk>/speech/", views.message_speech, name="speech"),
    path("media/<int:pk>/", views.media_file, name="media"),
    path("c/<int:pk>/rename/", views.conversation_rename_view, name="rename"),
    path("c/<int:pk>/persona/", views.conversation_persona_view, name="persona"),
    path("c/<int:pk>/delete/", views.conversation_delete_view, name="delete"),
    path("c/<int:pk>/documents/", views.document_upload, name="documents"),
    path("c/<int:pk>/documents/<int:document_id>/", views.document_status, name="document"),
    path("usage/", views.usage, name="usage"),
    path("link/", views.link_telegram, name="link"),
]
