"""Joining a Telegram account to the web page: /link gives a code, /web a link that signs in."""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.urls import reverse
from django.utils.translation import gettext as _
from telegram import LinkPreviewOptions, Update
from telegram.constants import ChatType

from botapp.linking import CODE_LIFETIME, SIGN_IN_LINK_LIFETIME, link_code_create, web_sign_in_link_create
from botapp.site import site_url
from botapp.telegram.delivery import telegram_call
from botapp.telegram.handlers import JarvisContext, jarvis_handler, reply


async def _in_private(update: Update, refusal: str) -> bool:
    """True in a private chat; elsewhere the person reads `refusal` (links and codes are for them alone)."""
    if update.effective_chat.type == ChatType.PRIVATE:
        return True
    await reply(update, refusal)
    return False


@jarvis_handler
async def link(update: Update, context: JarvisContext) -> None:
    """Give a one-time code that joins this Telegram account to a web account."""
    if not await _in_private(update, _("For your privacy, send /link to me in a private chat.")):
        return
    code = await sync_to_async(link_code_create)(identity=context.contact.identity)
    await reply(
        update,
        _(
            "Your link code is %(code)s. Sign in on the Jarvis web page, open %(url)s and enter it there within "
            "%(minutes)d minutes. Your Telegram conversations and usage then appear on the web page too."
        )
        % {
            "code": code.code,
            "url": site_url(reverse("web:link")),
            "minutes": int(CODE_LIFETIME.total_seconds() // 60),
        }
        + "\n"
        + _("No web account yet? Send /web instead: its link signs you in with this Telegram account."),
    )


@jarvis_handler
async def web(update: Update, context: JarvisContext) -> None:
    """Send a one-time link that signs this Telegram account in on the web page (an account made if needed)."""
    if not await _in_private(update, _("For your privacy, send /web to me in a private chat.")):
        return
    url = await sync_to_async(web_sign_in_link_create)(identity=context.contact.identity)
    message = update.effective_message
    text = _(
        "Open this link to sign in on the Jarvis web page as this Telegram account; your conversations are there "
        "too. It works once, within %(minutes)d minutes, and only for you: do not pass it on."
    ) % {"minutes": int(SIGN_IN_LINK_LIFETIME.total_seconds() // 60)}
    # No link preview: a preview would have Telegram's servers open the link.
    await telegram_call(
        lambda: message.get_bot().send_message(
            chat_id=message.chat_id,
            text=f"{text}\n\n{url}",
            link_preview_options=LinkPreviewOptions(is_disabled=True),
        ),
        what="sendMessage",
    )
