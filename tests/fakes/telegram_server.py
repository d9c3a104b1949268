"""A fake Telegram Bot API server on 127.0.0.1 that the real python-telegram-bot talks to over HTTP.

Point PTB at it with `base_url=f"{root}/bot"` and `base_file_url=f"{root}/file/bot"` (or
`Bot(**fake.bot_kwargs(token))`). The server runs in its own thread and event loop, so synchronous tests,
async tests and a bot running in a separate process can all use it at once. Several bot tokens can be
served side by side; each has its own bot user, update queue, chats, messages and files.

Tests inject updates with `push_text`, `push_voice`, ... `push_update`, inspect what the bot did with
`calls()`, `messages()` and `drafts()`, and wait for it with `wait_for` / `await_for`. `fail_next` and
`set_rate_limit` make the server answer the way Telegram does when things go wrong (429 with
`retry_after`, 400 for bad entities). `FakeTelegram(pacing=True)` (or `set_pacing`) adds Telegram's own limits
to every bot and chat: about 30 messages a second per bot overall and one a second per chat, a send or edit
beyond them answered 429 with `retry_after`, so that a burst is limited by Telegram, not by the bot.
HTML sent with `parse_mode=HTML` is parsed like Telegram parses it
(a port of TDLib's `parse_html`), so invalid markup gets Telegram's own error text. With
`strict_html=True` (the default) it is stricter than Telegram in one respect: a bare `&` or `>` in text
is refused too, because Telegram's documentation requires them escaped even though its parser forgives.

`sendMessageDraft` (Bot API 9.5) works in private chats; `FakeTelegram(drafts=False)` is a Bot API server from
before it, which answers the method with 404 "Not Found" as Telegram answers any unknown method. Drafts are
not rate-limited here (Telegram documents no limit for them).

Run standalone with `python -m tests.fakes.telegram_server --port N --token T`; it prints its root URL.
The `/_fake/...` routes then let another process push updates and read what the bot did.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import copy
import itertools
import json
import logging
import math
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Self, TypeVar

from aiohttp import web

from tests.fakes.files import png_dimensions

logger = logging.getLogger(__name__)

T = TypeVar("T")
ChatKey = int | str

MESSAGE_LIMIT = 4096
CAPTION_LIMIT = 1024
DOWNLOAD_LIMIT = 20 * 1024 * 1024  # getFile refuses bigger files
# sendPhoto: at most 10 MB, width + height at most 10000, one side at most 20 times the other.
PHOTO_LIMIT = 10 * 1024 * 1024
PHOTO_MAX_SIDES = 10000
PHOTO_MAX_RATIO = 20
_CONFLICT_POLL = "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running"
FILE_ROUTE_METHOD = "downloadFile"  # how file downloads appear in calls(); not a real Bot API method

# --- Telegram's HTML parser ---------------------------------------------------------------------


class TelegramHTMLError(ValueError):
    """Why Telegram refuses some HTML, worded as Telegram words it (after "can't parse entities: ")."""


_SUPPORTED_TAGS = frozenset(
    {
        "a", "b", "strong", "i", "em", "s", "strike", "del", "u", "ins",
        "tg-spoiler", "tg-emoji", "span", "pre", "code", "blockquote",
    }
)  # fmt: skip
_BLANK = " \t\r\n\v\f"
_SPACE = _BLANK + "\0"  # TDLib's is_space, which also stops at the end of the text (C's NUL)
_LINK_SCHEMES = frozenset({"http", "https", "tg", "ton"})
_SIMPLE_ENTITIES = {
    "i": "italic", "em": "italic", "b": "bold", "strong": "bold",
    "s": "strikethrough", "strike": "strikethrough", "del": "strikethrough",
    "u": "underline", "ins": "underline", "tg-spoiler": "spoiler", "span": "spoiler",
}  # fmt: skip


def utf16_length(text: str) -> int:
    """Length in UTF-16 code units, the unit of Telegram's entity offsets."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def _decode_entity(text: str, pos: int) -> tuple[str | None, int]:
    """Decode the character reference at `text[pos]` ("&") the way TDLib does: (character, next index)."""
    end = pos + 1
    if text.startswith("&#", pos):
        end += 1
        hexadecimal = text.startswith("x", end)
        if hexadecimal:
            end += 1
        start = end
        digits = "0123456789abcdefABCDEF" if hexadecimal else "0123456789"
        while end < len(text) and text[end] in digits:
            end += 1
        code = int(text[start:end], 16 if hexadecimal else 10) if end > start else 0
        if code == 0 or code >= 0x10FFFF or end - pos >= 10:
            return None, pos
        character = chr(code)
    else:
        while end < len(text) and text[end].isascii() and text[end].isalpha():
            end += 1
        named = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}.get(text[pos + 1 : end])
        if named is None:
            return None, pos
        character = named
    if text.startswith(";", end):
        end += 1
    return character, end


def _checked_link(url: str) -> str:
    """TDLib keeps links it can open and silently drops the rest (the text stays, the link goes)."""
    match = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", url)
    if match:
        return url if match.group(1).lower() in _LINK_SCHEMES else ""
    if ":" not in url and "." in url and not any(c in _SPACE for c in url):
        return f"http://{url}"
    return ""


@dataclass
class _OpenTag:
    name: str
    argument: str
    offset: int  # UTF-16 offset of the entity's first character
    begin: int  # index in the output text
    expandable: bool = False


def parse_telegram_html(text: str, *, strict: bool = True) -> tuple[str, list[dict[str, Any]]]:
    """Parse `text` as Telegram does for `parse_mode=HTML`: (visible text, Bot API entities).

    Raises TelegramHTMLError with Telegram's reason. `strict` also refuses an unescaped `&` (one that is
    not a character reference) and `>` in text or attribute values, and `<` inside attribute values.
    Leading and trailing whitespace is not trimmed here; `trim_text` does what Telegram does next.
    """
    n = len(text)

    def at(index: int) -> str:
        return text[index] if index < n else "\0"

    def byte_offset(index: int) -> int:
        return len(text[:index].encode("utf-8", "surrogatepass"))

    out: list[str] = []
    out_len = 0
    utf16 = 0
    entities: list[dict[str, Any]] = []
    stack: list[_OpenTag] = []
    surrogates = False
    i = 0
    while i < n:
        c = text[i]
        if c == "&":
            decoded, after = _decode_entity(text, i)
            if decoded is not None:
                surrogates |= 0xD800 <= ord(decoded) <= 0xDFFF
                out.append(decoded)
                out_len += 1
                utf16 += utf16_length(decoded) if not 0xD800 <= ord(decoded) <= 0xDFFF else 1
                i = after
                continue
            if strict:
                raise TelegramHTMLError(f'Unescaped "&" at byte offset {byte_offset(i)}')
        if c != "<":
            if strict and c == ">":
                raise TelegramHTMLError(f'Unescaped ">" at byte offset {byte_offset(i)}')
            out.append(c)
            out_len += 1
            utf16 += 2 if ord(c) > 0xFFFF else 1
            i += 1
            continue

        begin = i
        i += 1
        if at(i) != "/":
            while at(i) not in _SPACE and at(i) != ">":
                i += 1
            if i >= n:
                raise TelegramHTMLError(f"Unclosed start tag at byte offset {byte_offset(begin)}")
            name = text[begin + 1 : i].lower()
            if name not in _SUPPORTED_TAGS:
                raise TelegramHTMLError(f'Unsupported start tag "{name}" at byte offset {byte_offset(begin)}')
            tag = _OpenTag(name, "", utf16, out_len)
            while at(i) != ">":
                while i < n and at(i) in _BLANK:
                    i += 1
                if at(i) == ">":
                    break
                attribute_begin = i
                while at(i) not in _SPACE and at(i) not in "=>":
                    i += 1
                attribute = text[attribute_begin:i]
                if not attribute:
                    raise TelegramHTMLError(
                        f'Empty attribute name in the tag "{name}" at byte offset {byte_offset(begin)}'
                    )
                while i < n and at(i) in _BLANK:
                    i += 1
                if name == "blockquote" and attribute.lower() == "expandable" and at(i) != "=":
                    tag.expandable = True  # Bot API 7.4 allows this one attribute without a value
                    continue
                if at(i) != "=":
                    raise TelegramHTMLError(
                        f'Expected equal sign in declaration of an attribute of the tag "{name}" '
                        f"at byte offset {byte_offset(begin)}"
                    )
                i += 1
                while i < n and at(i) in _BLANK:
                    i += 1
                if i >= n:
                    raise TelegramHTMLError(f'Unclosed start tag "{name}" at byte offset {byte_offset(begin)}')
                if at(i) not in "'\"":
                    token_begin = i
                    while at(i).isascii() and (at(i).isalnum() or at(i) in ".-"):
                        i += 1
                    value = text[token_begin:i].lower()
                    if at(i) not in _SPACE and at(i) != ">":
                        raise TelegramHTMLError(
                            f"Unexpected end of name token at byte offset {byte_offset(token_begin)}"
                        )
                else:
                    quote = text[i]
                    i += 1
                    chars: list[str] = []
                    while i < n and text[i] != quote:
                        if text[i] == "&":
                            decoded, after = _decode_entity(text, i)
                            if decoded is not None:
                                chars.append(decoded)
                                i = after
                                continue
                            if strict:
                                raise TelegramHTMLError(f'Unescaped "&" at byte offset {byte_offset(i)}')
                        elif strict and text[i] in "<>":
                            raise TelegramHTMLError(f'Unescaped "{text[i]}" at byte offset {byte_offset(i)}')
                        chars.append(text[i])
                        i += 1
                    if i < n:
                        i += 1
                    value = "".join(chars)
                if i >= n:
                    raise TelegramHTMLError(f"Unclosed start tag at byte offset {byte_offset(begin)}")
                if name == "a" and attribute == "href":
                    tag.argument = value
                elif name == "code" and attribute == "class" and value.startswith("language-"):
                    tag.argument = value[len("language-") :]
                elif name == "span" and attribute == "class" and value.startswith("tg-"):
                    tag.argument = value[len("tg-") :]
                elif name == "tg-emoji" and attribute == "emoji-id":
                    tag.argument = value
            if name == "span" and tag.argument != "spoiler":
                raise TelegramHTMLError(f'Tag "span" must have class "tg-spoiler" at byte offset {byte_offset(begin)}')
            stack.append(tag)
            i += 1
            continue

        if not stack:
            raise TelegramHTMLError(f"Unexpected end tag at byte offset {byte_offset(begin)}")
        i += 1
        while at(i) not in _SPACE and at(i) != ">":
            i += 1
        end_name = text[begin + 2 : i].lower()
        while i < n and at(i) in _BLANK:
            i += 1
        if at(i) != ">":
            raise TelegramHTMLError(f"Unclosed end tag at byte offset {byte_offset(begin)}")
        tag = stack[-1]
        if end_name and end_name != tag.name:
            raise TelegramHTMLError(
                f'Unmatched end tag at byte offset {byte_offset(begin)}, expected "</{tag.name}>", '
                f'found "</{end_name}>"'
            )
        if utf16 > tag.offset:
            _close_entity(tag, utf16 - tag.offset, "".join(out[tag.begin :]), entities)
        stack.pop()
        i += 1

    if stack:
        raise TelegramHTMLError(f"Can't find end tag corresponding to start tag {stack[-1].name}")
    if surrogates:
        raise TelegramHTMLError(
            "Text contains invalid Unicode characters after decoding HTML entities, "
            "check for unmatched surrogate code units"
        )
    for entity in entities:
        entity.pop("_code_language", None)
    entities.sort(key=lambda e: (e["offset"], -e["length"]))
    return "".join(out), entities


def _close_entity(tag: _OpenTag, length: int, inner: str, entities: list[dict[str, Any]]) -> None:
    entity: dict[str, Any] = {"offset": tag.offset, "length": length}
    last = entities[-1] if entities else None
    same_span = last is not None and last["offset"] == tag.offset and last["length"] == length
    if tag.name in _SIMPLE_ENTITIES:
        entity["type"] = _SIMPLE_ENTITIES[tag.name]
    elif tag.name == "tg-emoji":
        if not tag.argument.isdigit() or int(tag.argument) == 0:
            raise TelegramHTMLError("Invalid custom emoji identifier specified")
        entity.update(type="custom_emoji", custom_emoji_id=tag.argument)
    elif tag.name == "a":
        url = _checked_link(tag.argument or inner)
        if not url:
            return
        entity.update(type="text_link", url=url)
    elif tag.name == "pre":
        # <pre><code class="language-x"> is one entity: a pre block with a language.
        if same_span and last is not None and last["type"] == "code":
            language = last.pop("_code_language", None)
            last["type"] = "pre"
            if language:
                last["language"] = language
            return
        entity["type"] = "pre"
    elif tag.name == "code":
        if same_span and last is not None and last["type"] == "pre" and tag.argument:
            last["language"] = tag.argument
            return
        entity["type"] = "code"
        if tag.argument:
            entity["_code_language"] = tag.argument
    elif tag.name == "blockquote":
        entity["type"] = "expandable_blockquote" if tag.expandable else "blockquote"
    entities.append(entity)


_TRIMMED = " \t\r\n"


def trim_text(text: str, entities: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Strip surrounding whitespace as Telegram does before storing a message, moving entities along."""
    trimmed = text.strip(_TRIMMED)
    if not trimmed:
        return "", []
    shift = utf16_length(text[: len(text) - len(text.lstrip(_TRIMMED))])
    total = utf16_length(trimmed)
    result = []
    for entity in entities:
        start = max(0, entity["offset"] - shift)
        end = min(total, entity["offset"] + entity["length"] - shift)
        if end > start:
            result.append({**entity, "offset": start, "length": end - start})
    return trimmed, result


# --- Records ------------------------------------------------------------------------------------


@dataclass
class UploadedFile:
    """A file the bot uploaded in a multipart request."""

    filename: str | None
    content_type: str | None
    data: bytes

    def summary(self) -> dict[str, Any]:
        return {"filename": self.filename, "content_type": self.content_type, "size": len(self.data)}


@dataclass
class ApiCall:
    """One request the server answered: Bot API method, token, decoded parameters and the answer."""

    method: str
    token: str
    params: dict[str, Any]
    time: float
    status: int = 200
    response: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def chat_id(self) -> ChatKey | None:
        value = self.params.get("chat_id")
        return None if value is None else _chat_key(value)


@dataclass
class ChatMessage:
    """A message in a chat as it currently stands, with every version of its text."""

    message_id: int
    chat_id: ChatKey
    from_bot: bool
    kind: str  # "text", "voice", "photo", "document", ...
    text: str  # what the user sees: text after entity parsing (or the caption)
    raw: str  # exactly as sent: the HTML source for parse_mode=HTML
    parse_mode: str | None
    entities: list[dict[str, Any]]
    reply_markup: dict[str, Any] | None
    reply_to_message_id: int | None
    date: int
    edit_date: int | None = None
    history: list[str] = field(default_factory=list)  # every raw text it had, oldest first, current last
    deleted: bool = False
    payload: dict[str, Any] = field(default_factory=dict)  # the Message object clients get

    @property
    def edits(self) -> int:
        return max(0, len(self.history) - 1)

    def snapshot(self) -> ChatMessage:
        return copy.deepcopy(self)


@dataclass
class Draft:
    """One sendMessageDraft call: the partial text a private chat was shown."""

    draft_id: int
    text: str  # after entity parsing
    raw: str
    parse_mode: str | None
    time: float


@dataclass
class _File:
    file_id: str
    file_unique_id: str
    file_path: str
    data: bytes
    size: int


@dataclass
class _PendingUpdate:
    update: dict[str, Any]
    delivered: bool = False


@dataclass
class _Bot:
    token: str
    user: dict[str, Any]
    next_update_id: int = 100_001
    updates: list[_PendingUpdate] = field(default_factory=list)
    allowed_updates: list[str] = field(default_factory=list)
    poll_generation: int = 0
    chats: dict[ChatKey, dict[str, Any]] = field(default_factory=dict)
    messages: dict[ChatKey, dict[int, ChatMessage]] = field(default_factory=dict)
    next_message_id: dict[ChatKey, int] = field(default_factory=dict)
    files: dict[str, _File] = field(default_factory=dict)
    commands: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    webhook_url: str = ""
    last_write: dict[ChatKey, float] = field(default_factory=dict)
    recent_writes: collections.deque[float] = field(default_factory=collections.deque)
    drafts: dict[ChatKey, list[Draft]] = field(default_factory=dict)


@dataclass
class _Fault:
    method: str  # lower case, "*" for any
    status: int
    description: str
    parameters: dict[str, Any] | None
    times: int
    chat_id: ChatKey | None
    token: str | None


@dataclass
class _RateLimit:
    min_interval: float
    retry_after: int | None


@dataclass(frozen=True)
class Pacing:
    """Telegram's broadcast limits: `per_second` sends and edits a second per bot, one per `chat_interval` per chat."""

    per_second: int = 30
    chat_interval: float = 1.0

    def floor(self, messages: int, start: float = 0.0) -> float:
        """The soonest one bot can deliver `messages` messages to as many chats, the first of them at `start`."""
        return start + (max(messages, 1) - 1) // self.per_second


class _ApiError(Exception):
    def __init__(self, status: int, description: str, parameters: dict[str, Any] | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.parameters = parameters


def _chat_key(value: Any) -> ChatKey:
    if isinstance(value, bool):
        raise _ApiError(400, "Bad Request: chat not found")
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    return text


# Parameters whose form value is a string even when it looks like JSON ("123", "true").
_STRING_PARAMS = frozenset(
    {
        "text", "caption", "parse_mode", "caption_parse_mode", "query_id", "inline_query_id",
        "callback_query_id", "inline_message_id", "file_id", "url", "action", "language_code", "name",
        "description", "short_description", "title", "performer", "file_name", "next_offset",
        "switch_pm_text", "switch_pm_parameter", "emoji", "secret_token", "ip_address",
        "business_connection_id", "message_effect_id", "question", "explanation",
        "explanation_parse_mode", "custom_emoji_id", "photo", "audio", "voice", "document", "video",
        "animation", "video_note", "sticker", "thumbnail", "first_name", "last_name", "phone_number",
        "vcard", "address", "foursquare_id", "payload", "currency", "start_parameter", "invite_link",
    }
)  # fmt: skip


def _form_value(name: str, value: str) -> Any:
    """PTB sends strings as they are and everything else JSON-encoded; undo that."""
    if name in _STRING_PARAMS:
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, UploadedFile):
        return value.summary()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


_CHAT_ACTIONS = frozenset(
    {
        "typing", "upload_photo", "record_video", "upload_video", "record_voice", "upload_voice",
        "upload_document", "choose_sticker", "find_location", "record_video_note", "upload_video_note",
    }
)  # fmt: skip
# Methods that write into a chat, and so count for set_rate_limit.
_WRITES = frozenset(
    {
        "sendmessage", "editmessagetext", "editmessagecaption", "editmessagereplymarkup",
        "editmessagemedia", "sendphoto", "senddocument", "sendaudio", "sendvoice", "sendvideo",
        "sendanimation", "sendvideonote", "sendsticker", "sendlocation", "sendmediagroup",
        "copymessage", "forwardmessage",
    }
)  # fmt: skip
_MEDIA_FOLDERS = {
    "voice": "voice", "audio": "music", "video_note": "video_notes", "photo": "photos",
    "document": "documents", "sticker": "stickers", "video": "videos", "animation": "animations",
}  # fmt: skip
_EXTENSIONS = {
    "audio/ogg": "oga", "audio/mpeg": "mp3", "audio/mp4": "m4a", "audio/x-wav": "wav", "audio/wav": "wav",
    "video/mp4": "mp4", "image/jpeg": "jpg", "image/png": "png", "image/webp": "webp",
    "application/pdf": "pdf", "text/plain": "txt",
}  # fmt: skip
_DEFAULT_MIME = {
    "voice": "audio/ogg", "audio": "audio/mpeg", "video_note": "video/mp4", "photo": "image/jpeg",
    "document": "application/octet-stream", "sticker": "image/webp", "video": "video/mp4",
    "animation": "video/mp4",
}  # fmt: skip
_SEND_MEDIA = {
    "sendphoto": "photo", "senddocument": "document", "sendaudio": "audio", "sendvoice": "voice",
    "sendvideo": "video", "sendanimation": "animation", "sendvideonote": "video_note",
    "sendsticker": "sticker",
}  # fmt: skip
_COMMAND_RE = re.compile(r"/[A-Za-z0-9_]{1,64}(?:@[A-Za-z0-9_]{3,32})?(?![\w/<>])")
_MENTION_RE = re.compile(r"(?<!\w)@[A-Za-z0-9_]{2,32}(?!\w)")


def _media_handler(kind: str) -> Callable[[FakeTelegram, _Bot, dict[str, Any]], Any]:
    """A handler for one send<Media> method."""

    def handler(self: FakeTelegram, bot: _Bot, params: dict[str, Any]) -> Any:
        return self._send_media(bot, params, kind)

    return handler


def text_entities(text: str) -> list[dict[str, Any]]:
    """The entities Telegram attaches to a user's text: a leading /command and @mentions."""
    entities = []
    command = _COMMAND_RE.match(text)
    if command:
        entities.append({"type": "bot_command", "offset": 0, "length": utf16_length(command.group())})
    for mention in _MENTION_RE.finditer(text):
        if command and mention.start() < command.end():
            continue
        offset = utf16_length(text[: mention.start()])
        entities.append({"type": "mention", "offset": offset, "length": utf16_length(mention.group())})
    return entities


# --- The server ---------------------------------------------------------------------------------


class FakeTelegram:
    """The fake Bot API: an aiohttp server in a background thread, plus thread-safe test helpers."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        strict_html: bool = True,
        tokens: Iterable[str] = (),
        drafts: bool = True,
        pacing: bool | Pacing = False,
    ) -> None:
        self.host = host
        self.port = port
        self.strict_html = strict_html
        self.drafts_supported = drafts
        self._cond = threading.Condition(threading.RLock())
        self._bots: dict[str, _Bot] = {}
        self._calls: list[ApiCall] = []
        self._faults: list[_Fault] = []
        self._rate_limits: dict[tuple[str | None, ChatKey | None], _RateLimit] = {}
        self._too_many_requests = 0
        self.pacing: Pacing | None = Pacing() if pacing is True else (pacing or None)
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._poll_event: asyncio.Event | None = None
        self._stopping = False
        for token in tokens:
            self.add_bot(token)

    # --- lifecycle ------------------------------------------------------------------------------

    @property
    def root_url(self) -> str:
        if self._thread is None:
            raise RuntimeError("FakeTelegram is not started")
        return f"http://{self.host}:{self.port}"

    def bot_kwargs(self, token: str) -> dict[str, str]:
        """Keyword arguments that point a `telegram.Bot` (or `ApplicationBuilder`) at this server."""
        return {"token": token, "base_url": f"{self.root_url}/bot", "base_file_url": f"{self.root_url}/file/bot"}

    def start(self) -> Self:
        if self._thread is not None:
            return self
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self._stopping = False
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[Exception] = []
        self._thread = threading.Thread(target=self._run, args=(sock, ready, failure), name="FakeTelegram", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            self._thread.join(5)
            self._thread = None
            raise failure[0]
        logger.info("Fake Telegram listening on %s", self.root_url)
        return self

    def _run(self, sock: socket.socket, ready: threading.Event, failure: list[Exception]) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._startup(sock))
        except Exception as exc:  # handed to start(), which re-raises it in the caller's thread
            failure.append(exc)
            ready.set()
            loop.close()
            return
        ready.set()
        loop.run_forever()
        loop.close()

    async def _startup(self, sock: socket.socket) -> None:
        self._poll_event = asyncio.Event()
        app = web.Application(client_max_size=128 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._handle_api)
        app.router.add_get("/file/bot{token}/{path:.+}", self._handle_file)
        app.router.add_get("/_fake/{action}", self._handle_control)
        app.router.add_post("/_fake/{action}", self._handle_control)
        # Long polls in flight must not hold up stop() for aiohttp's default minute.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        loop = self._loop
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
        try:
            future.result(10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(10)
            self._thread = None
            self._loop = None

    async def _shutdown(self) -> None:
        self._stopping = True
        self._pulse()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _pulse(self) -> None:
        """Wake every long poll so it looks at the queue again (runs in the server loop)."""
        if self._poll_event is not None:
            self._poll_event.set()
            self._poll_event = asyncio.Event()

    def _changed(self) -> None:
        """Call with the lock held after any change: wakes waiting tests and long polls."""
        self._cond.notify_all()
        loop = self._loop
        if threading.current_thread() is self._thread:
            self._pulse()  # already in the server loop: no need for the cross-thread wake-up
        elif loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._pulse)
            except RuntimeError:  # the loop closed between the check and the call
                pass

    # --- bots, chats, files ---------------------------------------------------------------------

    def add_bot(
        self, token: str, username: str | None = None, first_name: str = "Jarvis Test", bot_id: int | None = None
    ) -> dict[str, Any]:
        """Serve `token`; returns the bot's User object. Re-adding a token updates its user."""
        with self._cond:
            if bot_id is None:
                prefix = token.split(":", 1)[0]
                bot_id = int(prefix) if prefix.isdigit() else 7_000_000_000 + next(self._ids)
            user = {
                "id": bot_id,
                "is_bot": True,
                "first_name": first_name,
                "username": username or f"fake{bot_id}_bot",
                "can_join_groups": True,
                "can_read_all_group_messages": False,
                "supports_inline_queries": True,
            }
            if token in self._bots:
                self._bots[token].user = user
            else:
                self._bots[token] = _Bot(token=token, user=user)
            self._changed()
            return dict(user)

    def _bot(self, token: str) -> _Bot:
        bot = self._bots.get(token)
        if bot is None:
            raise KeyError(f"unknown bot token {token[:12]}…; call add_bot first")
        return bot

    def _chat(
        self,
        bot: _Bot,
        chat_id: ChatKey,
        chat_type: str | None = None,
        user: dict[str, Any] | None = None,
        title: str | None = None,
    ) -> dict[str, Any]:
        chat = bot.chats.get(chat_id)
        if chat is None or (chat_type is not None and chat["type"] != chat_type):
            if chat_type is None:
                chat_type = "private" if isinstance(chat_id, int) and chat_id > 0 else "supergroup"
            chat = {"id": chat_id, "type": chat_type}
            if chat_type == "private":
                chat["first_name"] = (user or {}).get("first_name", "Tester")
                if (user or {}).get("username"):
                    chat["username"] = user["username"]  # type: ignore[index]
            else:
                chat["title"] = title or f"Chat {chat_id}"
            bot.chats[chat_id] = chat
        return chat

    def add_file(
        self,
        token: str,
        data: bytes,
        kind: str = "document",
        mime_type: str | None = None,
        file_size: int | None = None,
        file_name: str | None = None,
    ) -> dict[str, Any]:
        """Register a downloadable file for `token`; returns {file_id, file_unique_id, file_size, file_path}."""
        with self._cond:
            bot = self._bot(token)
            number = next(self._ids)
            mime_type = mime_type or _DEFAULT_MIME.get(kind, "application/octet-stream")
            extension = _EXTENSIONS.get(mime_type.split(";")[0].strip(), "bin")
            if file_name and "." in file_name:
                extension = file_name.rsplit(".", 1)[1]
            record = _File(
                file_id=f"fake-{kind}-{number}",
                file_unique_id=f"uniq{number}",
                file_path=f"{_MEDIA_FOLDERS.get(kind, 'documents')}/file_{number}.{extension}",
                data=bytes(data),
                size=len(data) if file_size is None else file_size,
            )
            bot.files[record.file_id] = record
            return self._file_object(record)

    @staticmethod
    def _file_object(record: _File) -> dict[str, Any]:
        return {"file_id": record.file_id, "file_unique_id": record.file_unique_id, "file_size": record.size}

    # --- injecting updates ----------------------------------------------------------------------

    def push_update(self, token: str, update: dict[str, Any]) -> dict[str, Any]:
        """Queue a raw update. Without "update_id" the next id is used; an explicit id may repeat an old one
        (a duplicate delivery), which is delivered once more regardless of the offset already confirmed."""
        with self._cond:
            bot = self._bot(token)
            update = copy.deepcopy(update)
            if "update_id" not in update:
                update["update_id"] = bot.next_update_id
            bot.next_update_id = max(bot.next_update_id, int(update["update_id"]) + 1)
            bot.updates.append(_PendingUpdate(update))
            self._changed()
            return copy.deepcopy(update)

    def _user(self, user_id: int, username: str | None, first_name: str, language_code: str | None) -> dict[str, Any]:
        user: dict[str, Any] = {"id": user_id, "is_bot": False, "first_name": first_name}
        if username:
            user["username"] = username
        if language_code:
            user["language_code"] = language_code
        return user

    def _push_message(
        self,
        token: str,
        chat_id: int | str,
        kind: str,
        content: dict[str, Any],
        *,
        user_id: int | None = None,
        username: str | None = "tester",
        first_name: str = "Tester",
        language_code: str | None = "en",
        chat_type: str | None = None,
        chat_title: str | None = None,
        reply_to_message_id: int | None = None,
        message_thread_id: int | None = None,
        text: str = "",
    ) -> dict[str, Any]:
        with self._cond:
            bot = self._bot(token)
            key = _chat_key(chat_id)
            if user_id is None:
                user_id = key if isinstance(key, int) and key > 0 else 1001
            sender = self._user(user_id, username, first_name, language_code)
            if chat_type is None:
                chat_type = "private" if isinstance(key, int) and key > 0 else "supergroup"
            chat = self._chat(bot, key, chat_type, sender, chat_title)
            message_id = self._next_message_id(bot, key)
            payload: dict[str, Any] = {
                "message_id": message_id,
                "from": sender,
                "chat": dict(chat),
                "date": int(time.time()),
                **copy.deepcopy(content),
            }
            if message_thread_id is not None:
                payload["message_thread_id"] = message_thread_id
            if reply_to_message_id is not None:
                payload["reply_to_message"] = self._reply_payload(bot, key, reply_to_message_id)
            caption_or_text = content.get("text", content.get("caption", ""))
            bot.messages.setdefault(key, {})[message_id] = ChatMessage(
                message_id=message_id,
                chat_id=key,
                from_bot=False,
                kind=kind,
                text=caption_or_text,
                raw=caption_or_text,
                parse_mode=None,
                entities=content.get("entities", content.get("caption_entities", [])),
                reply_markup=None,
                reply_to_message_id=reply_to_message_id,
                date=payload["date"],
                history=[caption_or_text],
                payload=payload,
            )
            return self.push_update(token, {"message": payload})

    def _reply_payload(self, bot: _Bot, chat_id: ChatKey, message_id: int) -> dict[str, Any]:
        message = bot.messages.get(chat_id, {}).get(message_id)
        if message is not None and not message.deleted:
            payload = copy.deepcopy(message.payload)
            payload.pop("reply_to_message", None)
            return payload
        return {"message_id": message_id, "date": 0, "chat": dict(self._chat(bot, chat_id))}

    def _next_message_id(self, bot: _Bot, chat_id: ChatKey) -> int:
        number = bot.next_message_id.get(chat_id, 1)
        bot.next_message_id[chat_id] = number + 1
        return number

    def push_text(
        self,
        token: str,
        chat_id: int | str,
        text: str,
        user_id: int | None = None,
        username: str | None = "tester",
        language_code: str | None = "en",
        chat_type: str | None = None,
        reply_to_message_id: int | None = None,
        *,
        first_name: str = "Tester",
        chat_title: str | None = None,
        entities: list[dict[str, Any]] | None = None,
        message_thread_id: int | None = None,
    ) -> dict[str, Any]:
        """Queue a text message from a user; entities for a leading /command and @mentions are added.

        `user_id` defaults to the chat id for a private chat (positive id) and 1001 otherwise; `chat_type`
        defaults to "private" for positive ids and "supergroup" for negative ones. Returns the update.
        """
        content: dict[str, Any] = {"text": text}
        found = text_entities(text) if entities is None else entities
        if found:
            content["entities"] = found
        return self._push_message(
            token, chat_id, "text", content, user_id=user_id, username=username, first_name=first_name,
            language_code=language_code, chat_type=chat_type, chat_title=chat_title,
            reply_to_message_id=reply_to_message_id, message_thread_id=message_thread_id,
        )  # fmt: skip

    def _push_media(
        self,
        token: str,
        chat_id: int | str,
        kind: str,
        data: bytes,
        mime_type: str | None,
        file_size: int | None,
        extra: dict[str, Any],
        caption: str | None,
        file_name: str | None = None,
        **common: Any,
    ) -> dict[str, Any]:
        media = self.add_file(token, data, kind, mime_type, file_size, file_name)
        media.update(extra)
        if kind in ("voice", "audio", "document", "video") and mime_type:
            media["mime_type"] = mime_type
        if file_name:
            media["file_name"] = file_name
        content: dict[str, Any] = {kind: [media] if kind == "photo" else media}
        if caption:
            content["caption"] = caption
            found = text_entities(caption)
            if found:
                content["caption_entities"] = found
        return self._push_message(token, chat_id, kind, content, **common)

    def push_voice(
        self, token: str, chat_id: int | str, data: bytes, duration: int = 1, mime_type: str = "audio/ogg",
        file_size: int | None = None, *, caption: str | None = None, **common: Any,
    ) -> dict[str, Any]:  # fmt: skip
        """Queue a voice message whose file can be downloaded; `common` takes push_text's sender keywords.
        `file_size` overrides the size Telegram reports (e.g. to exceed getFile's 20 MB limit cheaply)."""
        return self._push_media(
            token, chat_id, "voice", data, mime_type, file_size, {"duration": duration}, caption, **common
        )

    def push_audio(
        self, token: str, chat_id: int | str, data: bytes, duration: int = 1, mime_type: str = "audio/mpeg",
        file_size: int | None = None, *, file_name: str | None = None, title: str | None = None,
        performer: str | None = None, caption: str | None = None, **common: Any,
    ) -> dict[str, Any]:  # fmt: skip
        """Queue an audio file (music) message; see push_voice."""
        extra: dict[str, Any] = {"duration": duration}
        if title:
            extra["title"] = title
        if performer:
            extra["performer"] = performer
        return self._push_media(
            token, chat_id, "audio", data, mime_type, file_size, extra, caption, file_name, **common
        )

    def push_video_note(
        self, token: str, chat_id: int | str, data: bytes, duration: int = 1, length: int = 240,
        file_size: int | None = None, **common: Any,
    ) -> dict[str, Any]:  # fmt: skip
        """Queue a round video message; see push_voice."""
        extra = {"duration": duration, "length": length}
        return self._push_media(token, chat_id, "video_note", data, "video/mp4", file_size, extra, None, **common)

    def push_photo(
        self, token: str, chat_id: int | str, data: bytes, caption: str | None = None, *, width: int = 800,
        height: int = 600, mime_type: str = "image/jpeg", file_size: int | None = None, **common: Any,
    ) -> dict[str, Any]:  # fmt: skip
        """Queue a photo (one PhotoSize) with an optional caption; see push_voice."""
        extra = {"width": width, "height": height}
        return self._push_media(token, chat_id, "photo", data, mime_type, file_size, extra, caption, **common)

    def push_document(
        self, token: str, chat_id: int | str, data: bytes, file_name: str = "file.txt",
        mime_type: str = "text/plain", caption: str | None = None, *, file_size: int | None = None,
        **common: Any,
    ) -> dict[str, Any]:  # fmt: skip
        """Queue a document; see push_voice."""
        return self._push_media(
            token, chat_id, "document", data, mime_type, file_size, {}, caption, file_name, **common
        )

    def push_sticker(
        self, token: str, chat_id: int | str, data: bytes = b"RIFF", emoji: str = "👍", *,
        is_animated: bool = False, is_video: bool = False, **common: Any,
    ) -> dict[str, Any]:  # fmt: skip
        """Queue a sticker; see push_voice."""
        extra = {
            "type": "regular", "width": 512, "height": 512, "is_animated": is_animated,
            "is_video": is_video, "emoji": emoji,
        }  # fmt: skip
        mime_type = "video/webm" if is_video else "application/x-tgsticker" if is_animated else "image/webp"
        return self._push_media(token, chat_id, "sticker", data, mime_type, None, extra, None, **common)

    def push_location(
        self, token: str, chat_id: int | str, latitude: float, longitude: float, **common: Any
    ) -> dict[str, Any]:
        """Queue a location message; `common` takes push_text's sender keywords."""
        content = {"location": {"latitude": latitude, "longitude": longitude}}
        return self._push_message(token, chat_id, "location", content, **common)

    def push_inline_query(
        self,
        token: str,
        query: str,
        user_id: int = 1001,
        username: str | None = "tester",
        *,
        offset: str = "",
        chat_type: str | None = "private",
        first_name: str = "Tester",
        language_code: str | None = "en",
    ) -> dict[str, Any]:
        """Queue an inline query; its id is `update["inline_query"]["id"]`."""
        inline: dict[str, Any] = {
            "id": f"iq{next(self._ids)}",
            "from": self._user(user_id, username, first_name, language_code),
            "query": query,
            "offset": offset,
        }
        if chat_type:
            inline["chat_type"] = chat_type
        return self.push_update(token, {"inline_query": inline})

    def push_callback_query(
        self,
        token: str,
        chat_id: int | str,
        message_id: int,
        data: str,
        user_id: int | None = None,
        username: str | None = "tester",
        *,
        first_name: str = "Tester",
        language_code: str | None = "en",
    ) -> dict[str, Any]:
        """Queue a press on an inline button of message `message_id`; its id is `update["callback_query"]["id"]`."""
        with self._cond:
            bot = self._bot(token)
            key = _chat_key(chat_id)
            if user_id is None:
                user_id = key if isinstance(key, int) and key > 0 else 1001
            query = {
                "id": f"cq{next(self._ids)}",
                "from": self._user(user_id, username, first_name, language_code),
                "message": self._reply_payload(bot, key, message_id),
                "chat_instance": f"ci{key}",
                "data": data,
            }
            return self.push_update(token, {"callback_query": query})

    # --- fault injection ------------------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        status: int = 429,
        retry_after: int | None = 2,
        times: int = 1,
        chat_id: int | str | None = None,
        *,
        description: str | None = None,
        token: str | None = None,
    ) -> None:
        """Answer the next `times` calls of `method` ("*" for any) with an error, as Telegram words it.

        429 gets "Too Many Requests: retry after N" and `parameters.retry_after`; for other statuses pass
        `description` (e.g. "Bad Request: can't parse entities: ..."), or a generic one is used.
        """
        if description is None:
            description = {
                429: f"Too Many Requests: retry after {retry_after}",
                400: "Bad Request",
                401: "Unauthorized",
                403: "Forbidden: bot was blocked by the user",
                404: "Not Found",
                409: _CONFLICT_POLL,
                500: "Internal Server Error",
                502: "Bad Gateway",
            }.get(status, "Error")
        parameters = {"retry_after": retry_after} if status == 429 and retry_after is not None else None
        with self._cond:
            self._faults.append(
                _Fault(
                    method=method.lower(),
                    status=status,
                    description=description,
                    parameters=parameters,
                    times=times,
                    chat_id=None if chat_id is None else _chat_key(chat_id),
                    token=token,
                )
            )

    def set_rate_limit(
        self,
        chat_id: int | str | None = None,
        min_interval: float = 1.0,
        *,
        token: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        """Flood control: a send/edit in a chat sooner than `min_interval` seconds after the last accepted one
        gets 429 (retry_after = the seconds left, rounded up, unless given). `chat_id=None` applies it to
        every chat separately; `min_interval <= 0` removes the rule."""
        key = (token, None if chat_id is None else _chat_key(chat_id))
        with self._cond:
            if min_interval <= 0:
                self._rate_limits.pop(key, None)
            else:
                self._rate_limits[key] = _RateLimit(min_interval, retry_after)

    def set_pacing(self, pacing: Pacing | None = Pacing()) -> None:
        """Apply Telegram's broadcast limits to every bot and chat from now on (None switches them off)."""
        with self._cond:
            self.pacing = pacing

    def clear_faults(self) -> None:
        """Forget every pending fail_next and rate limit."""
        with self._cond:
            self._faults.clear()
            self._rate_limits.clear()

    @property
    def too_many_requests_count(self) -> int:
        """How many 429 answers the server has given (fail_next and flood control together)."""
        with self._cond:
            return self._too_many_requests

    def reset(self) -> None:
        """Forget calls, chats, messages, updates, files, faults and rate limits; keep the bots."""
        with self._cond:
            self._calls.clear()
            self._faults.clear()
            self._rate_limits.clear()
            self._too_many_requests = 0
            for bot in self._bots.values():
                # Cleared in place: a long poll in flight holds on to this object.
                fresh = _Bot(token=bot.token, user=bot.user, next_update_id=bot.next_update_id)
                fresh.poll_generation = bot.poll_generation
                bot.__dict__.update(fresh.__dict__)
            self._changed()

    # --- inspecting -----------------------------------------------------------------------------

    def polls_started(self, token: str) -> int:
        """How many getUpdates requests with a timeout the bot has begun (a long poll counts from its start)."""
        with self._cond:
            return self._bot(token).poll_generation

    def calls(self, method: str | None = None, token: str | None = None) -> list[ApiCall]:
        """Every answered request so far (oldest first), optionally only one method and/or token."""
        with self._cond:
            return [
                copy.deepcopy(call)
                for call in self._calls
                if (method is None or call.method.lower() == method.lower()) and (token is None or call.token == token)
            ]

    def messages(
        self, token: str, chat_id: int | str, *, include_deleted: bool = False, include_user: bool = False
    ) -> list[ChatMessage]:
        """The bot's messages in a chat as they stand now (edits applied), oldest first."""
        with self._cond:
            bot = self._bot(token)
            chat = bot.messages.get(_chat_key(chat_id), {})
            return [
                message.snapshot()
                for _, message in sorted(chat.items())
                if (include_user or message.from_bot) and (include_deleted or not message.deleted)
            ]

    def drafts(self, token: str, chat_id: int | str) -> list[Draft]:
        """Every draft the bot showed in a chat (oldest first), whether or not a message replaced it since."""
        with self._cond:
            return copy.deepcopy(self._bot(token).drafts.get(_chat_key(chat_id), []))

    def pending_updates(self, token: str) -> list[dict[str, Any]]:
        """Updates queued for the bot and not yet confirmed by a getUpdates offset."""
        with self._cond:
            return [copy.deepcopy(p.update) for p in self._bot(token).updates]

    def commands(
        self, token: str, scope: dict[str, Any] | None = None, language_code: str = ""
    ) -> list[dict[str, Any]]:
        """The commands set with setMyCommands for a scope and language."""
        with self._cond:
            return copy.deepcopy(self._bot(token).commands.get(self._commands_key(scope, language_code), []))

    def wait_for(self, predicate: Callable[[], T], timeout: float = 5.0) -> T:
        """Block until `predicate()` (called with the server's state locked) is truthy; return its value."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                result = predicate()
                if result:
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"condition not met within {timeout}s")
                self._cond.wait(remaining)

    async def await_for(self, predicate: Callable[[], T], timeout: float = 5.0, interval: float = 0.01) -> T:
        """`wait_for` for async tests: polls without blocking the caller's event loop."""
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                result = predicate()
            if result:
                return result
            if time.monotonic() >= deadline:
                raise TimeoutError(f"condition not met within {timeout}s")
            await asyncio.sleep(interval)

    def wait_for_calls(
        self, method: str, count: int = 1, token: str | None = None, timeout: float = 5.0
    ) -> list[ApiCall]:
        """Block until at least `count` calls of `method` were answered; return them all."""

        def enough() -> list[ApiCall]:
            calls = self.calls(method, token)
            return calls if len(calls) >= count else []

        return self.wait_for(enough, timeout)

    def wait_for_messages(
        self, token: str, chat_id: int | str, count: int = 1, timeout: float = 5.0
    ) -> list[ChatMessage]:
        """Block until the bot has at least `count` live messages in the chat; return them all."""

        def enough() -> list[ChatMessage]:
            found = self.messages(token, chat_id)
            return found if len(found) >= count else []

        return self.wait_for(enough, timeout)

    # --- HTTP -----------------------------------------------------------------------------------

    async def _read_params(self, request: web.Request) -> dict[str, Any]:
        params: dict[str, Any] = {k: _form_value(k, v) for k, v in request.query.items()}
        if request.method != "POST" or not request.body_exists:
            return params
        if request.content_type == "application/json":
            body = await request.json()
            if isinstance(body, dict):
                params.update(body)
            return params
        form = await request.post()
        for name, value in form.items():
            if isinstance(value, web.FileField):
                params[name] = UploadedFile(value.filename, value.content_type, value.file.read())
            else:
                params[name] = _form_value(name, str(value))
        return params

    @staticmethod
    def _error(status: int, description: str, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
        if parameters:
            body["parameters"] = parameters
        return body

    def _record(self, method: str, token: str, params: dict[str, Any], status: int, body: dict[str, Any]) -> None:
        with self._cond:
            if status == 429:
                self._too_many_requests += 1
            self._calls.append(ApiCall(method, token, params, time.time(), status, body))
            self._changed()
        logger.debug("%s -> %s", method, status)

    async def _handle_api(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        method = request.match_info["method"]
        try:
            params = await self._read_params(request)
        except ConnectionError:  # the client gave up while sending; nobody is left to answer
            return web.Response(status=400)
        except (ValueError, UnicodeDecodeError):
            params = {}
        lowered = method.lower()
        name = self._names.get(lowered, method)
        try:
            with self._cond:
                bot = self._bots.get(token)
                if bot is None:
                    raise _ApiError(401, "Unauthorized")
                self._check_faults(bot, lowered, params)
            if lowered == "getupdates":
                result = await self._get_updates(bot, params)
            else:
                with self._cond:
                    handler = self._handlers.get(lowered)
                    result = handler(self, bot, params) if handler else self._fallback(bot, lowered, params)
                    if lowered in _WRITES and "chat_id" in params:
                        now = time.monotonic()
                        bot.last_write[_chat_key(params["chat_id"])] = now
                        if self.pacing is not None:
                            bot.recent_writes.append(now)
            status, body = 200, {"ok": True, "result": result}
        except _ApiError as exc:
            status, body = exc.status, self._error(exc.status, exc.description, exc.parameters)
        self._record(name, token, params, status, body)
        return web.json_response(body, status=status)

    def _check_faults(self, bot: _Bot, method: str, params: dict[str, Any]) -> None:
        chat = params.get("chat_id")
        chat_key = None if chat is None else _chat_key(chat)
        for fault in self._faults:
            if fault.method not in ("*", method):
                continue
            if fault.token is not None and fault.token != bot.token:
                continue
            if fault.chat_id is not None and fault.chat_id != chat_key:
                continue
            fault.times -= 1
            if fault.times <= 0:
                self._faults.remove(fault)
            raise _ApiError(fault.status, fault.description, fault.parameters)
        if method not in _WRITES or chat_key is None:
            return
        if self.pacing is not None:
            self._check_pacing(bot, chat_key, self.pacing)
        rule = next(
            (
                self._rate_limits[key]
                for key in ((bot.token, chat_key), (None, chat_key), (bot.token, None), (None, None))
                if key in self._rate_limits
            ),
            None,
        )
        last = bot.last_write.get(chat_key)
        if rule is None or last is None:
            return
        left = rule.min_interval - (time.monotonic() - last)
        if left > 0:
            retry_after = rule.retry_after if rule.retry_after is not None else max(1, math.ceil(left))
            raise _ApiError(429, f"Too Many Requests: retry after {retry_after}", {"retry_after": retry_after})

    @staticmethod
    def _check_pacing(bot: _Bot, chat_key: ChatKey, pacing: Pacing) -> None:
        now = time.monotonic()
        window = bot.recent_writes
        while window and now - window[0] >= 1.0:
            window.popleft()
        left = 0.0
        if len(window) >= pacing.per_second:
            left = 1.0 - (now - window[len(window) - pacing.per_second])
        last = bot.last_write.get(chat_key)
        if last is not None:
            left = max(left, pacing.chat_interval - (now - last))
        if left > 0:
            # Telegram gives whole seconds, at least one.
            retry_after = max(1, math.ceil(left))
            raise _ApiError(429, f"Too Many Requests: retry after {retry_after}", {"retry_after": retry_after})

    async def _get_updates(self, bot: _Bot, params: dict[str, Any]) -> list[dict[str, Any]]:
        offset = int(params.get("offset") or 0)
        limit = min(100, max(1, int(params.get("limit") or 100)))
        timeout = max(0.0, float(params.get("timeout") or 0))
        loop = asyncio.get_running_loop()
        with self._cond:
            if bot.webhook_url:
                raise _ApiError(
                    409,
                    "Conflict: can't use getUpdates method while webhook is active; "
                    "use deleteWebhook to delete the webhook first",
                )
            if isinstance(params.get("allowed_updates"), list):
                bot.allowed_updates = [str(kind) for kind in params["allowed_updates"]]
            if offset > 0:
                bot.updates = [p for p in bot.updates if not (p.delivered and p.update["update_id"] < offset)]
            elif offset < 0:
                bot.updates = bot.updates[offset:]
            bot.poll_generation += 1
            generation = bot.poll_generation
        self._pulse()  # an older long poll for this token must now give up with 409
        deadline = loop.time() + timeout
        while True:
            event = self._poll_event
            with self._cond:
                if bot.poll_generation != generation:
                    raise _ApiError(409, _CONFLICT_POLL)
                batch = self._take_updates(bot, limit)
            remaining = deadline - loop.time()
            if batch or self._stopping or remaining <= 0 or event is None:
                return batch
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except TimeoutError:
                pass

    @staticmethod
    def _take_updates(bot: _Bot, limit: int) -> list[dict[str, Any]]:
        # Telegram never stores updates the bot did not ask for, so they are dropped here.
        unwanted = {"chat_member", "message_reaction", "message_reaction_count"}
        allowed = set(bot.allowed_updates)
        kept = []
        for pending in bot.updates:
            kinds = set(pending.update) - {"update_id"}
            wanted = bool(kinds & allowed) if allowed else not kinds & unwanted
            if wanted or not kinds:
                kept.append(pending)
        bot.updates = kept
        batch = kept[:limit]
        for pending in batch:
            pending.delivered = True
        return [copy.deepcopy(p.update) for p in batch]

    async def _handle_file(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        path = request.match_info["path"]
        with self._cond:
            bot = self._bots.get(token)
            record = next((f for f in bot.files.values() if f.file_path == path), None) if bot else None
        status = 200 if record is not None else 404
        body = {} if record is not None else self._error(404, "Not Found")
        self._record(FILE_ROUTE_METHOD, token, {"file_path": path}, status, body)
        if record is None:
            return web.json_response(body, status=404)
        return web.Response(body=record.data, content_type="application/octet-stream")

    # --- Bot API methods (called with the lock held) --------------------------------------------

    def _fallback(self, bot: _Bot, method: str, params: dict[str, Any]) -> Any:
        # Unknown methods succeed; a send* still needs a Message back or PTB cannot parse the answer.
        if method.startswith("send") and "chat_id" in params:
            key = _chat_key(params["chat_id"])
            return self._store_bot_message(bot, key, "other", "", "", None, [], params).payload
        return True

    def _format(self, params: dict[str, Any], field_name: str, mode_name: str, entities_name: str,
                limit: int) -> tuple[str, str, str | None, list[dict[str, Any]]]:  # fmt: skip
        raw = params.get(field_name)
        raw = "" if raw is None else str(raw)
        mode = params.get(mode_name)
        mode = str(mode) if mode else None
        caption = field_name == "caption"
        if mode is None:
            visible, entities = raw, list(params.get(entities_name) or [])
        elif mode.lower() == "html":
            try:
                visible, entities = parse_telegram_html(raw, strict=self.strict_html)
            except TelegramHTMLError as exc:
                raise _ApiError(400, f"Bad Request: can't parse entities: {exc}") from None
        elif mode.lower() in ("markdown", "markdownv2"):
            visible, entities = raw, []  # not parsed: the project sends HTML
        else:
            raise _ApiError(400, "Bad Request: unsupported parse_mode")
        visible, entities = trim_text(visible, entities)
        if not visible and not caption:
            raise _ApiError(400, "Bad Request: message text is empty")
        if len(visible) > limit:
            raise _ApiError(400, f"Bad Request: message {'caption ' if caption else ''}is too long")
        return raw, visible, mode, entities

    def _target_chat(self, bot: _Bot, params: dict[str, Any]) -> ChatKey:
        if params.get("chat_id") in (None, ""):
            raise _ApiError(400, "Bad Request: chat_id is empty")
        key = _chat_key(params["chat_id"])
        self._chat(bot, key)
        return key

    def _store_bot_message(
        self,
        bot: _Bot,
        chat_id: ChatKey,
        kind: str,
        raw: str,
        visible: str,
        mode: str | None,
        entities: list[dict[str, Any]],
        params: dict[str, Any],
        content: dict[str, Any] | None = None,
    ) -> ChatMessage:
        reply_to = params.get("reply_to_message_id")
        reply_parameters = params.get("reply_parameters")
        allow_missing = bool(params.get("allow_sending_without_reply"))
        if isinstance(reply_parameters, dict):
            reply_to = reply_parameters.get("message_id")
            allow_missing = allow_missing or bool(reply_parameters.get("allow_sending_without_reply"))
        payload: dict[str, Any] = {
            "message_id": 0,
            "from": dict(bot.user),
            "chat": dict(self._chat(bot, chat_id)),
            "date": int(time.time()),
        }
        if reply_to is not None:
            target = bot.messages.get(chat_id, {}).get(int(reply_to))
            if target is None or target.deleted:
                if not allow_missing:
                    raise _ApiError(400, "Bad Request: message to be replied not found")
                reply_to = None
            else:
                payload["reply_to_message"] = self._reply_payload(bot, chat_id, int(reply_to))
        payload["message_id"] = self._next_message_id(bot, chat_id)
        if kind == "text":
            payload["text"] = visible
            if entities:
                payload["entities"] = entities
        else:
            payload.update(content or {})
            if visible:
                payload["caption"] = visible
                if entities:
                    payload["caption_entities"] = entities
        markup = params.get("reply_markup")
        if isinstance(markup, dict) and "inline_keyboard" in markup:
            payload["reply_markup"] = markup  # Telegram echoes only inline keyboards
        message = ChatMessage(
            message_id=payload["message_id"],
            chat_id=chat_id,
            from_bot=True,
            kind=kind,
            text=visible,
            raw=raw,
            parse_mode=mode,
            entities=entities,
            reply_markup=markup if isinstance(markup, dict) else None,
            reply_to_message_id=None if reply_to is None else int(reply_to),
            date=payload["date"],
            history=[raw],
            payload=payload,
        )
        bot.messages.setdefault(chat_id, {})[message.message_id] = message
        return message

    def _m_get_me(self, bot: _Bot, params: dict[str, Any]) -> Any:
        return dict(bot.user)

    def _m_send_message_draft(self, bot: _Bot, params: dict[str, Any]) -> Any:
        if not self.drafts_supported:
            raise _ApiError(404, "Not Found")
        chat_id = self._target_chat(bot, params)
        if not isinstance(chat_id, int) or chat_id <= 0:
            raise _ApiError(400, "Bad Request: TEXTDRAFT_PEER_INVALID")
        try:
            draft_id = int(params.get("draft_id") or 0)
        except (TypeError, ValueError):
            draft_id = 0
        if draft_id == 0:
            raise _ApiError(400, "Bad Request: parameter draft_id must be non-zero")
        if params.get("text") in (None, ""):
            raw, visible, mode = "", "", None  # an empty draft shows "Thinking..."
        else:
            raw, visible, mode, _entities = self._format(params, "text", "parse_mode", "entities", MESSAGE_LIMIT)
        bot.drafts.setdefault(chat_id, []).append(Draft(draft_id, visible, raw, mode, time.time()))
        return True

    def _m_send_message(self, bot: _Bot, params: dict[str, Any]) -> Any:
        chat_id = self._target_chat(bot, params)
        raw, visible, mode, entities = self._format(params, "text", "parse_mode", "entities", MESSAGE_LIMIT)
        message = self._store_bot_message(bot, chat_id, "text", raw, visible, mode, entities, params)
        return copy.deepcopy(message.payload)

    def _find_message(self, bot: _Bot, params: dict[str, Any], missing: str) -> ChatMessage:
        if params.get("chat_id") in (None, "") or params.get("message_id") in (None, ""):
            raise _ApiError(400, f"Bad Request: {missing}")
        message = bot.messages.get(_chat_key(params["chat_id"]), {}).get(int(params["message_id"]))
        if message is None or message.deleted:
            raise _ApiError(400, f"Bad Request: {missing}")
        return message

    def _apply_edit(
        self,
        message: ChatMessage,
        raw: str,
        visible: str,
        mode: str | None,
        entities: list[dict[str, Any]],
        markup: Any,
    ) -> Any:
        markup = markup if isinstance(markup, dict) else None
        if visible == message.text and entities == message.entities and markup == message.reply_markup:
            raise _ApiError(
                400,
                "Bad Request: message is not modified: specified new message content and reply markup are "
                "exactly the same as a current content and reply markup of the message",
            )
        message.text, message.raw, message.parse_mode, message.entities = visible, raw, mode, entities
        message.reply_markup = markup
        message.edit_date = int(time.time())
        message.history.append(raw)
        payload = message.payload
        text_key, entities_key = ("text", "entities") if message.kind == "text" else ("caption", "caption_entities")
        payload[text_key] = visible
        payload.pop(entities_key, None)
        if entities:
            payload[entities_key] = entities
        payload.pop("reply_markup", None)
        if markup and "inline_keyboard" in markup:
            payload["reply_markup"] = markup
        payload["edit_date"] = message.edit_date
        return copy.deepcopy(payload)

    def _m_edit_message_text(self, bot: _Bot, params: dict[str, Any]) -> Any:
        if params.get("inline_message_id"):
            self._format(params, "text", "parse_mode", "entities", MESSAGE_LIMIT)
            return True
        message = self._find_message(bot, params, "message to edit not found")
        if not message.from_bot:
            raise _ApiError(400, "Bad Request: message can't be edited")
        if message.kind != "text":
            raise _ApiError(400, "Bad Request: there is no text in the message to edit")
        raw, visible, mode, entities = self._format(params, "text", "parse_mode", "entities", MESSAGE_LIMIT)
        return self._apply_edit(message, raw, visible, mode, entities, params.get("reply_markup"))

    def _m_edit_message_caption(self, bot: _Bot, params: dict[str, Any]) -> Any:
        if params.get("inline_message_id"):
            return True
        message = self._find_message(bot, params, "message to edit not found")
        if not message.from_bot:
            raise _ApiError(400, "Bad Request: message can't be edited")
        if message.kind == "text":
            raise _ApiError(400, "Bad Request: there is no caption in the message to edit")
        raw, visible, mode, entities = self._format(params, "caption", "parse_mode", "caption_entities", CAPTION_LIMIT)
        return self._apply_edit(message, raw, visible, mode, entities, params.get("reply_markup"))

    def _m_edit_message_reply_markup(self, bot: _Bot, params: dict[str, Any]) -> Any:
        if params.get("inline_message_id"):
            return True
        message = self._find_message(bot, params, "message to edit not found")
        return self._apply_edit(
            message, message.raw, message.text, message.parse_mode, message.entities, params.get("reply_markup")
        )

    def _m_delete_message(self, bot: _Bot, params: dict[str, Any]) -> Any:
        message = self._find_message(bot, params, "message to delete not found")
        message.deleted = True
        return True

    def _m_delete_messages(self, bot: _Bot, params: dict[str, Any]) -> Any:
        chat = bot.messages.get(_chat_key(params.get("chat_id", "")), {})
        for message_id in params.get("message_ids") or []:
            if int(message_id) in chat:
                chat[int(message_id)].deleted = True
        return True

    def _m_send_chat_action(self, bot: _Bot, params: dict[str, Any]) -> Any:
        self._target_chat(bot, params)
        if params.get("action") not in _CHAT_ACTIONS:
            raise _ApiError(400, "Bad Request: wrong parameter action in request")
        return True

    def _send_media(self, bot: _Bot, params: dict[str, Any], kind: str) -> Any:
        chat_id = self._target_chat(bot, params)
        source = params.get(kind)
        if kind == "photo" and isinstance(source, UploadedFile):
            self._check_photo(source.data)
        if isinstance(source, UploadedFile):
            mime = source.content_type or _DEFAULT_MIME.get(kind)
            media = self.add_file(bot.token, source.data, kind, mime, file_name=source.filename)
            if kind in ("document", "audio") and source.filename:
                media["file_name"] = source.filename
        elif isinstance(source, str) and source in bot.files:
            media = self._file_object(bot.files[source])
        elif isinstance(source, str) and source:
            media = self.add_file(bot.token, b"", kind)  # a URL: Telegram would fetch it
        else:
            raise _ApiError(400, f"Bad Request: there is no {kind} in the request")
        if kind in ("voice", "audio", "video", "video_note", "animation"):
            media["duration"] = int(params.get("duration") or 0)
        if kind in ("photo", "sticker", "video", "animation"):
            media.update(width=512, height=512)
        if kind == "sticker":
            media.update(type="regular", is_animated=False, is_video=False)
        if kind == "video_note":
            media["length"] = 240
        raw, visible, mode, entities = self._format(params, "caption", "parse_mode", "caption_entities", CAPTION_LIMIT)
        content = {kind: [media] if kind == "photo" else media}
        stored = self._store_bot_message(bot, chat_id, kind, raw, visible, mode, entities, params, content)
        return copy.deepcopy(stored.payload)

    @staticmethod
    def _check_photo(data: bytes) -> None:
        """Telegram's limits on an uploaded photo (PNG dimensions are read; other formats only by size)."""
        if len(data) > PHOTO_LIMIT:
            raise _ApiError(400, "Bad Request: PHOTO_SAVE_FILE_INVALID")
        dimensions = png_dimensions(data)
        if dimensions is not None:
            width, height = dimensions
            if width + height > PHOTO_MAX_SIDES or max(width, height) > PHOTO_MAX_RATIO * max(min(width, height), 1):
                raise _ApiError(400, "Bad Request: PHOTO_INVALID_DIMENSIONS")

    def _m_get_file(self, bot: _Bot, params: dict[str, Any]) -> Any:
        record = bot.files.get(str(params.get("file_id", "")))
        if record is None:
            raise _ApiError(400, "Bad Request: invalid file_id")
        if record.size > DOWNLOAD_LIMIT:
            raise _ApiError(400, "Bad Request: file is too big")
        return {**self._file_object(record), "file_path": record.file_path}

    def _m_answer_inline_query(self, bot: _Bot, params: dict[str, Any]) -> Any:
        if not params.get("inline_query_id"):
            raise _ApiError(400, "Bad Request: query is too old and response timeout expired or query ID is invalid")
        if not isinstance(params.get("results"), list):
            raise _ApiError(400, "Bad Request: can't parse inline query results")
        return True

    def _m_answer_callback_query(self, bot: _Bot, params: dict[str, Any]) -> Any:
        if not params.get("callback_query_id"):
            raise _ApiError(400, "Bad Request: query is too old and response timeout expired or query ID is invalid")
        return True

    @staticmethod
    def _commands_key(scope: Any, language_code: Any) -> str:
        scope = scope if isinstance(scope, dict) else {"type": "default"}
        return json.dumps([scope, language_code or ""], sort_keys=True)

    def _m_set_my_commands(self, bot: _Bot, params: dict[str, Any]) -> Any:
        commands = params.get("commands")
        if not isinstance(commands, list):
            raise _ApiError(400, "Bad Request: can't parse commands JSON object")
        for command in commands:
            name = str(command.get("command", "")) if isinstance(command, dict) else ""
            if not re.fullmatch(r"[a-z0-9_]{1,32}", name) or not command.get("description"):
                raise _ApiError(400, "Bad Request: BOT_COMMAND_INVALID")
        bot.commands[self._commands_key(params.get("scope"), params.get("language_code"))] = commands
        return True

    def _m_get_my_commands(self, bot: _Bot, params: dict[str, Any]) -> Any:
        return copy.deepcopy(bot.commands.get(self._commands_key(params.get("scope"), params.get("language_code")), []))

    def _m_delete_my_commands(self, bot: _Bot, params: dict[str, Any]) -> Any:
        bot.commands.pop(self._commands_key(params.get("scope"), params.get("language_code")), None)
        return True

    def _m_set_webhook(self, bot: _Bot, params: dict[str, Any]) -> Any:
        bot.webhook_url = str(params.get("url") or "")
        if params.get("drop_pending_updates"):
            bot.updates.clear()
        return True

    def _m_delete_webhook(self, bot: _Bot, params: dict[str, Any]) -> Any:
        bot.webhook_url = ""
        if params.get("drop_pending_updates"):
            bot.updates.clear()
        return True

    def _m_get_webhook_info(self, bot: _Bot, params: dict[str, Any]) -> Any:
        return {"url": bot.webhook_url, "has_custom_certificate": False, "pending_update_count": len(bot.updates)}

    def _m_get_chat(self, bot: _Bot, params: dict[str, Any]) -> Any:
        chat = self._chat(bot, self._target_chat(bot, params))
        gifts = dict.fromkeys(
            ("unlimited_gifts", "limited_gifts", "unique_gifts", "premium_subscription", "gifts_from_channels"),
            False,
        )
        return {**chat, "accent_color_id": 0, "max_reaction_count": 11, "accepted_gift_types": gifts}

    def _m_true(self, bot: _Bot, params: dict[str, Any]) -> Any:
        return True

    _handlers: ClassVar[dict[str, Callable[[FakeTelegram, _Bot, dict[str, Any]], Any]]] = {
        "getme": _m_get_me,
        "sendmessage": _m_send_message,
        "sendmessagedraft": _m_send_message_draft,
        "editmessagetext": _m_edit_message_text,
        "editmessagecaption": _m_edit_message_caption,
        "editmessagereplymarkup": _m_edit_message_reply_markup,
        "deletemessage": _m_delete_message,
        "deletemessages": _m_delete_messages,
        "sendchataction": _m_send_chat_action,
        "getfile": _m_get_file,
        "answerinlinequery": _m_answer_inline_query,
        "answercallbackquery": _m_answer_callback_query,
        "setmycommands": _m_set_my_commands,
        "getmycommands": _m_get_my_commands,
        "deletemycommands": _m_delete_my_commands,
        "setwebhook": _m_set_webhook,
        "deletewebhook": _m_delete_webhook,
        "getwebhookinfo": _m_get_webhook_info,
        "getchat": _m_get_chat,
        "close": _m_true,
        "logout": _m_true,
        **{method: _media_handler(kind) for method, kind in _SEND_MEDIA.items()},
    }
    _names: ClassVar[dict[str, str]] = {
        name.lower(): name
        for name in (
            "getMe", "getUpdates", "sendMessage", "sendMessageDraft", "editMessageText", "editMessageCaption",
            "editMessageReplyMarkup", "deleteMessage", "deleteMessages", "sendChatAction", "getFile",
            "answerInlineQuery", "answerCallbackQuery", "setMyCommands", "getMyCommands",
            "deleteMyCommands", "setWebhook", "deleteWebhook", "getWebhookInfo", "getChat", "close",
            "logOut", "sendPhoto", "sendDocument", "sendAudio", "sendVoice", "sendVideo",
            "sendAnimation", "sendVideoNote", "sendSticker",
        )
    }  # fmt: skip

    # --- control routes for other processes (the standalone CLI) -------------------------------

    _CONTROL_ACTIONS: ClassVar[frozenset[str]] = frozenset(
        {
            "add_bot", "push_text", "push_update", "push_voice", "push_audio", "push_video_note",
            "push_photo", "push_document", "push_sticker", "push_location", "push_inline_query",
            "push_callback_query", "fail_next", "set_rate_limit", "clear_faults", "reset",
        }
    )  # fmt: skip

    async def _handle_control(self, request: web.Request) -> web.Response:
        action = request.match_info["action"]
        query = dict(request.query)
        try:
            if request.method == "GET":
                return web.json_response(self._control_view(action, query))
            if action not in self._CONTROL_ACTIONS:
                raise web.HTTPNotFound(text=f"unknown action {action}")
            kwargs = await request.json() if request.body_exists else {}
            if "data_base64" in kwargs:
                kwargs["data"] = base64.b64decode(kwargs.pop("data_base64"))
            result = getattr(self, action)(**kwargs)
            return web.json_response({"ok": True, "result": result})
        except (KeyError, TypeError, ValueError) as exc:
            return web.json_response({"ok": False, "description": str(exc)}, status=400)

    def _control_view(self, action: str, query: dict[str, str]) -> Any:
        if action == "calls":
            calls = self.calls(query.get("method"), query.get("token"))
            return [{**asdict(call), "params": _jsonable(call.params)} for call in calls]
        if action == "messages":
            found = self.messages(query["token"], query["chat_id"], include_user=query.get("include_user") == "1")
            return [asdict(message) for message in found]
        if action == "stats":
            with self._cond:
                return {
                    "calls": len(self._calls),
                    "too_many_requests": self._too_many_requests,
                    "bots": [bot.user["username"] for bot in self._bots.values()],
                }
        raise KeyError(f"unknown view {action}")


def main(argv: list[str] | None = None) -> None:
    """Run the fake standalone until interrupted, printing its root URL."""
    parser = argparse.ArgumentParser(description="Run the fake Telegram Bot API server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", action="append", default=[], help="bot token to serve (repeatable)")
    parser.add_argument("--lenient-html", action="store_true", help="accept bare & and > like Telegram")
    parser.add_argument("--no-drafts", action="store_true", help="act as a Bot API server without sendMessageDraft")
    parser.add_argument("--pacing", action="store_true", help="apply Telegram's limits: 30 sends a second, 1 per chat")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    fake = FakeTelegram(
        args.host,
        args.port,
        strict_html=not args.lenient_html,
        tokens=args.token,
        drafts=not args.no_drafts,
        pacing=args.pacing,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with fake:
        print(fake.root_url, flush=True)  # noqa: T201 - the URL is the CLI's output
        while not stop.wait(0.5):
            pass


if __name__ == "__main__":
    main()
