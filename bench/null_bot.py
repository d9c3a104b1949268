"""The floor for the benchmarks: the least a bot can do, in raw aiohttp, with no framework and no SDK.

It long-polls getUpdates, asks the model (one plain POST, no streaming) and sends the answer: no
python-telegram-bot, no openai SDK, no history. What it measures is what the fake servers and the machine
allow, so that Jarvis's and the baseline's figures can be read against it.
"""

import asyncio
import os

import aiohttp


async def answer(session: aiohttp.ClientSession, api: str, openai: str, update: dict) -> None:
    message = update.get("message") or {}
    text, chat = message.get("text"), (message.get("chat") or {}).get("id")
    if text is None or chat is None:
        return
    body = {"model": os.environ.get("OPENAI_MODEL", "gpt-4o-mini"), "messages": [{"role": "user", "content": text}]}
    headers = {"Authorization": f"Bearer {os.environ.get('OPENAI_API_KEY', 'x')}"}
    async with session.post(f"{openai}/chat/completions", json=body, headers=headers) as response:
        reply = (await response.json())["choices"][0]["message"]["content"]
    async with session.post(f"{api}/sendMessage", json={"chat_id": chat, "text": reply}) as response:
        await response.read()


async def main() -> None:
    root = os.environ.get("TELEGRAM_API_BASE_URL", "https://api.telegram.org").rstrip("/")
    api = f"{root}/bot{os.environ['TELEGRAM_BOT_TOKEN']}"
    openai = os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1").rstrip("/")
    offset, tasks = 0, set()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
        while True:
            params = {"offset": offset, "timeout": 10}
            async with session.post(f"{api}/getUpdates", json=params) as response:
                updates = (await response.json())["result"]
            for update in updates:
                offset = max(offset, update["update_id"] + 1)
                task = asyncio.create_task(answer(session, api, openai, update))
                tasks.add(task)
                task.add_done_callback(tasks.discard)


if __name__ == "__main__":
    asyncio.run(main())
