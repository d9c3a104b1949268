"""The bot's commands and menus: /start, /help, /new, /mode, /model, /stats, /retry, /voice, /caps, inline mode."""

from __future__ import annotations

import logging

from asgiref.sync import sync_to_async
from django.utils.translation import gettext as _
from telegram import (
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InlineQueryResultArticle,
    InputTextMessageContent,
    Update,
)
from telegram.error import BadRequest

from botapp.choices import ChoiceError, conversation_model_set, conversation_persona_set, model_price_label
from botapp.conversations import ReplyRefused, conversation_start, turn_retry
from botapp.models import Channel
from botapp.selectors import personas_offered
from botapp.telegram import selectors, services
from botapp.telegram.delivery import telegram_call
from botapp.telegram.handlers import JarvisContext, bot_commands, chat_conversation, is_group, jarvis_handler, reply
from botapp.telegram.handlers.chat import deliver_turn
from botapp.usage import format_usd

logger = logging.getLogger(__name__)

PERSONA_CALLBACK_PREFIX = "persona:"
MODEL_CALLBACK_PREFIX = "model:"


@jarvis_handler
async def start(update: Update, context: JarvisContext) -> None:
    """Greet the person and say what Jarvis does."""
    name = update.effective_user.first_name if update.effective_user else ""
    greeting = _("Hello %(name)s, I am Jarvis, your assistant.") % {"name": name} if name else _("Hello, I am Jarvis.")
    await reply(
        update,
        greeting
        + "\n\n"
        + _("Write to me, send a voice message or a photo, and I will answer. /help lists what else I can do.")
        + "\n"
        + _("/web gives you a link to the same conversations on the web page."),
    )


@jarvis_handler
async def help_command(update: Update, context: JarvisContext) -> None:
    """List what Jarvis does and its commands."""
    lines = [_("Jarvis answers your messages with an AI model and remembers the conversation."), ""]
    lines += [f"/{command.command} – {command.description}" for command in bot_commands()]
    lines += [
        "",
        _(
            "Voice messages, audio and video notes are transcribed and answered; photos are answered when the "
            "persona's model can see images."
        ),
        _(
            "Send a document (PDF, Word, text, Markdown, HTML, CSV or code) with a question as its caption, or "
            "ask about it afterwards; answers cite the pages they come from."
        ),
        _("In a group, mention me or reply to one of my messages."),
        _("Inline mode: type @%(username)s and some text in any chat to shout it in capitals.")
        % {"username": context.bot.username},
    ]
    await reply(update, "\n".join(lines))


@jarvis_handler
async def new_conversation(update: Update, context: JarvisContext) -> None:
    """Start a fresh conversation in this chat, keeping the chosen persona."""
    current = await chat_conversation(update, context)
    await sync_to_async(conversation_start)(
        user=context.contact.user,
        channel=Channel.TELEGRAM,
        bot=context.contact.bot,
        telegram_chat_id=update.effective_chat.id,
        persona=current.persona,
        voice_answers=current.voice_answers,
    )
    await reply(update, _("Started a new conversation. Jarvis has set the earlier messages aside."))


@jarvis_handler
async def retry(update: Update, context: JarvisContext) -> None:
    """Answer the last question again; the previous answer stays on record."""
    chat = update.effective_chat
    conversation = await chat_conversation(update, context)
    try:
        turn = await sync_to_async(turn_retry)(conversation=conversation)
    except ReplyRefused as refusal:
        await reply(update, str(refusal))
        return
    await deliver_turn(
        context.bot,
        turn,
        chat_id=chat.id,
        group=is_group(chat.type),
        reply_to=turn.user_message.telegram_message_id or update.effective_message.message_id,
    )


@jarvis_handler
async def voice(update: Update, context: JarvisContext) -> None:
    """Switch this chat's answers between text and voice notes."""
    conversation = await chat_conversation(update, context)
    speaking = await sync_to_async(services.conversation_voice_switch)(conversation=conversation)
    if speaking:
        await reply(
            update,
            _(
                "Voice answers are on: Jarvis answers in this chat with voice notes, text included. "
                "Send /voice again for text."
            ),
        )
    else:
        await reply(
            update, _("Voice answers are off: Jarvis answers in this chat with text. Send /voice for voice notes.")
        )


@jarvis_handler
async def stats(update: Update, context: JarvisContext) -> None:
    """Tokens and cost today, this month and ever, and what is left of the budget."""
    summary = await sync_to_async(selectors.usage_summary)(user=context.contact.user)
    rows = [
        (_("Today"), summary.today),
        (_("This month"), summary.month),
        (_("All time"), summary.all_time),
    ]
    lines = [_("Your usage:")]
    lines += [
        _("%(period)s: %(tokens)s tokens, %(cost)s")
        % {"period": label, "tokens": f"{total.tokens:,}", "cost": format_usd(total.cost_usd)}
        for label, total in rows
    ]
    lines.append("")
    for period in summary.periods:
        name = _("Daily budget") if period.name == "daily" else _("Monthly budget")
        if period.limit is None:
            lines.append(_("%(name)s: unlimited") % {"name": name})
        else:
            lines.append(
                _("%(name)s: %(remaining)s left of %(limit)s")
                % {"name": name, "remaining": format_usd(period.remaining), "limit": format_usd(period.limit)}
            )
    await reply(update, "\n".join(lines))


# --- Menus --------------------------------------------------------------------------------------


async def _menu_confirm(update: Update, confirmation: str) -> None:
    """Say what a menu button changed, and leave that sentence in place of the menu."""
    query = update.callback_query
    await query.answer(confirmation)
    try:
        await query.edit_message_text(confirmation)
    except BadRequest as exc:
        logger.debug("Could not update the menu: %s", exc)


@jarvis_handler
async def mode(update: Update, context: JarvisContext) -> None:
    """Offer the active personas as buttons."""
    conversation = await chat_conversation(update, context)
    personas = await sync_to_async(lambda: list(personas_offered()))()
    if not personas:
        await reply(update, _("There are no personas to choose from. An admin can add some."))
        return
    buttons = [
        [
            InlineKeyboardButton(
                ("✓ " if persona.pk == conversation.persona_id else "") + persona.name,
                callback_data=f"{PERSONA_CALLBACK_PREFIX}{persona.pk}",
            )
        ]
        for persona in personas
    ]
    message = update.effective_message
    await telegram_call(
        lambda: message.reply_text(
            _("Choose how Jarvis should behave in this chat:"), reply_markup=InlineKeyboardMarkup(buttons)
        ),
        what="sendMessage",
    )


@jarvis_handler
async def persona_chosen(update: Update, context: JarvisContext) -> None:
    """Switch the chat's conversation to the persona whose button was pressed."""
    query = update.callback_query
    try:
        persona_id = int((query.data or "").removeprefix(PERSONA_CALLBACK_PREFIX))
    except ValueError:
        persona_id = None
    persona = await sync_to_async(selectors.persona_offered)(pk=persona_id) if persona_id is not None else None
    if persona is None:
        await query.answer(_("That persona is no longer offered. Send /mode again."), show_alert=True)
        return
    conversation = await chat_conversation(update, context)
    await sync_to_async(conversation_persona_set)(conversation=conversation, persona=persona)
    await _menu_confirm(update, _("Persona: %(name)s. The next answer uses it.") % {"name": persona.name})


@jarvis_handler
async def model(update: Update, context: JarvisContext) -> None:
    """Offer the models an admin lets people choose, each with its price; the persona's model first."""
    conversation = await chat_conversation(update, context)
    persona_model, offered = await sync_to_async(selectors.chat_models)(conversation=conversation)
    if not offered:
        await reply(
            update,
            _("This chat answers with %(model)s, the persona's model; an admin has offered no other models.")
            % {"model": persona_model},
        )
        return
    chosen = conversation.model if conversation.model in {price.model for price in offered} else ""
    mark = "✓ "
    buttons = [
        [
            InlineKeyboardButton(
                ("" if chosen else mark) + _("Persona's model (%(model)s)") % {"model": persona_model},
                callback_data=MODEL_CALLBACK_PREFIX,
            )
        ]
    ]
    buttons += [
        [
            InlineKeyboardButton(
                (mark if price.model == chosen else "") + f"{price.model} · {model_price_label(price)}",
                callback_data=f"{MODEL_CALLBACK_PREFIX}{price.model}"[:64],
            )
        ]
        for price in offered
    ]
    message = update.effective_message
    await telegram_call(
        lambda: message.reply_text(
            _("Choose the model that answers in this chat (prices per million tokens):"),
            reply_markup=InlineKeyboardMarkup(buttons),
        ),
        what="sendMessage",
    )


@jarvis_handler
async def model_chosen(update: Update, context: JarvisContext) -> None:
    """Switch the chat's conversation to the model whose button was pressed."""
    query = update.callback_query
    name = (query.data or "").removeprefix(MODEL_CALLBACK_PREFIX)
    conversation = await chat_conversation(update, context)
    try:
        await sync_to_async(conversation_model_set)(conversation=conversation, model=name)
    except ChoiceError as exc:
        await query.answer(str(exc) + " " + _("Send /model again."), show_alert=True)
        return
    if name:
        confirmation = _("Model: %(model)s. The next answer uses it.") % {"model": name}
    else:
        confirmation = _("The persona's model answers again from the next message on.")
    await _menu_confirm(update, confirmation)


# --- The seed's commands, and commands Jarvis does not know -------------------------------------


@jarvis_handler
async def caps(update: Update, context: JarvisContext) -> None:
    """Shout the command's arguments back in capitals (the seed's /caps)."""
    text = " ".join(context.args or []).upper()
    await reply(update, text or _("Send /caps followed by some text, for example: /caps i love you"))


@jarvis_handler
async def inline_caps(update: Update, context: JarvisContext) -> None:
    """Offer the inline query in capitals (the seed's inline mode)."""
    query = update.inline_query.query
    if not query:
        await update.inline_query.answer([], cache_time=0)
        return
    result = InlineQueryResultArticle(
        id="caps",
        title=_("Caps"),
        description=query.upper()[:100],
        input_message_content=InputTextMessageContent(query.upper()),
    )
    await update.inline_query.answer([result], cache_time=0)


@jarvis_handler
async def unknown_command(update: Update, context: JarvisContext) -> None:
    """Answer a command Jarvis does not know (the seed's reply, in words a person can act on)."""
    message = update.effective_message
    if is_group(message.chat.type):
        command = (message.text or "").split()[0]
        if "@" not in command or command.split("@", 1)[1].lower() != (context.bot.username or "").lower():
            return
    await reply(update, _("What does that mean? I don't know that command. Send /help to see what I can do."))
