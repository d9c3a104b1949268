"""The baseline for the benchmarks: a minimal python-telegram-bot + openai bot that keeps history in a dict.

It persists nothing, prices nothing and checks nothing: what a toy bot does. It reads the same variables as
Jarvis (TELEGRAM_BOT_TOKEN, TELEGRAM_API_BASE_URL, OPENAI_API_KEY, OPENAI_BASE_URL, OPENAI_MODEL).
"""

import logging
import os
from collections import defaultdict

from openai import AsyncOpenAI
from telegram import Update
from telegram.ext import Application, ContextTypes, MessageHandler, filters

logger = logging.getLogger("baseline")
HISTORY: dict[int, list[dict[str, str]]] = defaultdict(list)
SYSTEM = {"role": "system", "content": "You are Jarvis, a helpful, concise assistant."}
client = AsyncOpenAI(api_key=os.environ.get("OPENAI_API_KEY") or "x", base_url=os.environ.get("OPENAI_BASE_URL"))
MODEL = os.environ.get("OPENAI_MODEL", "gpt-4o-mini")


async def answer(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Send the text with the chat's last 20 messages to the model and reply with its answer."""
    history = HISTORY[update.effective_chat.id]
    history.append({"role": "user", "content": update.message.text})
    response = await client.chat.completions.create(model=MODEL, messages=[SYSTEM, *history[-20:]])
    text = response.choices[0].message.content or ""
    history.append({"role": "assistant", "content": text})
    await update.message.reply_text(text)


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    root = os.environ.get("TELEGRAM_API_BASE_URL", "https://api.telegram.org").rstrip("/")
    application = (
        Application.builder()
        .token(os.environ["TELEGRAM_BOT_TOKEN"])
        .base_url(f"{root}/bot")
        .base_file_url(f"{root}/file/bot")
        .concurrent_updates(True)
        .build()
    )
    application.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND, answer))
    application.run_polling(poll_interval=0, timeout=10)


if __name__ == "__main__":
    main()
