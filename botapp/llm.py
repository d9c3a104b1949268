"""The model provider: the only module that imports `openai` (chat, tools, transcription, embeddings, media)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import importlib.util
import json
import logging
import sys
import uuid
import weakref
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import httpx2
import openai
from django.conf import settings
from django.utils.translation import gettext as _

logger = logging.getLogger(__name__)

# Chat Completions adds a few tokens around every message and primes the reply (OpenAI cookbook).
TOKENS_PER_MESSAGE = 3
TOKENS_REPLY_PRIMING = 3
# What one low-detail image costs in context, for estimates only; the provider reports the real figure.
TOKENS_PER_IMAGE = 85


# --- Errors -------------------------------------------------------------------------------------


class LLMError(Exception):
    """A model call failed; `str(error)` is a sentence a person can act on."""


class LLMConfigError(LLMError):
    """Jarvis is not configured to reach a model provider."""


class LLMAuthError(LLMError):
    """The provider refused the API key."""


class LLMRateLimited(LLMError):
    """The provider is rate limiting us, even after retries."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class LLMQuotaExceeded(LLMError):
    """The provider account has no credit left."""


class LLMUnavailable(LLMError):
    """The provider could not be reached or answered with a server error."""


class LLMTimeout(LLMUnavailable):
    """The provider did not answer in time."""


class LLMModelNotFound(LLMError):
    """The provider does not know the model."""


class LLMContextTooLong(LLMError):
    """The provider says the request does not fit the model's context window."""


class LLMBadRequest(LLMError):
    """The provider rejected the request for another reason."""


class LLMToolsUnsupported(LLMBadRequest):
    """The model (or the server in front of it) refused a request because it carried tools."""


class LLMStreamBroken(LLMError):
    """The answer stopped arriving part-way through."""


class LLMContentRefused(LLMError):
    """The provider's safety system refused the request."""


class LLMUnsupportedOption(LLMBadRequest):
    """The provider does not accept an option Jarvis sent (a picture size or quality, a voice)."""


# --- Results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """Token usage as reported by the provider."""

    input_tokens: int
    output_tokens: int
    cached_input_tokens: int = 0
    model: str = ""


@dataclass(frozen=True)
class ToolCall:
    """A function call the model asked for: its id, the function's name and its arguments as JSON text."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ToolCalls:
    """Yielded by `chat_stream` once the stream ended with the model asking for these calls (in order)."""

    calls: tuple[ToolCall, ...]


@dataclass(frozen=True)
class Transcript:
    text: str
    audio_seconds: Decimal
    model: str


@dataclass(frozen=True)
class Picture:
    """A picture the provider made and the usage it reported (None: it reported none, e.g. dall-e-3)."""

    data: bytes
    model: str
    size: str
    quality: str
    revised_prompt: str = ""
    # Of input_tokens, those of pictures sent in; of output_tokens, those of the picture made.
    usage: Usage | None = None
    image_input_tokens: int = 0
    image_output_tokens: int = 0


@dataclass(frozen=True)
class Speech:
    """Audio the provider spoke, with the tokens it reported (None: billed by characters, e.g. tts-1)."""

    data: bytes
    model: str
    content_type: str
    characters: int
    usage: Usage | None = None


# --- Client -------------------------------------------------------------------------------------


# One client per event loop: its connection pool belongs to the loop that opened it.
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[tuple[Any, ...], openai.AsyncOpenAI]] = (
    weakref.WeakKeyDictionary()
)


def get_client() -> openai.AsyncOpenAI:
    """The client for the running loop; raises LLMConfigError when there is nothing to talk to."""
    api_key, base_url = settings.OPENAI_API_KEY, settings.OPENAI_BASE_URL
    if not api_key:
        if not base_url:
            raise LLMConfigError(
                _("Jarvis has no model provider configured: an admin must set OPENAI_API_KEY (or OPENAI_BASE_URL).")
            )
        # Local OpenAI-compatible servers (Ollama, vLLM) accept any key; the SDK insists on one.
        api_key = "not-needed"
    key = (api_key, base_url, settings.OPENAI_TIMEOUT, settings.OPENAI_MAX_RETRIES)
    loop = asyncio.get_running_loop()
    cached = _clients.get(loop)
    if cached is not None and cached[0] == key:
        return cached[1]
    client = openai.AsyncOpenAI(
        api_key=api_key,
        base_url=base_url,
        timeout=httpx2.Timeout(settings.OPENAI_TIMEOUT, connect=min(settings.OPENAI_TIMEOUT, 10.0)),
        max_retries=settings.OPENAI_MAX_RETRIES,
    )
    _clients[loop] = (key, client)
    return client


def is_configured() -> bool:
    return bool(settings.OPENAI_API_KEY or settings.OPENAI_BASE_URL)


# What servers that cannot do function calling say when they get `tools` (Ollama, vLLM, llama.cpp, LM Studio).
_TOOLS_REFUSAL_WORDS = ("tool", "function")


def _translate(exc: Exception, *, model: str, tools_sent: bool = False) -> LLMError:
    """Map an SDK or transport error to a typed error whose text tells a person what to do."""
    if isinstance(exc, LLMError):
        return exc
    if (
        tools_sent
        and isinstance(exc, openai.BadRequestError | openai.UnprocessableEntityError)
        and any(word in (exc.message or "").lower() for word in _TOOLS_REFUSAL_WORDS)
    ):
        return LLMToolsUnsupported(exc.message or "")
    if isinstance(exc, openai.APITimeoutError):
        return LLMTimeout(_("The AI service did not answer in time. Please try again in a minute."))
    if isinstance(exc, openai.APIConnectionError):
        return LLMUnavailable(_("The AI service cannot be reached right now. Please try again in a minute."))
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return LLMAuthError(_("The AI service refused Jarvis's API key. An admin must check OPENAI_API_KEY."))
    if isinstance(exc, openai.RateLimitError):
        if getattr(exc, "code", None) == "insufficient_quota":
            return LLMQuotaExceeded(_("The AI service account has run out of credit. Please tell an admin."))
        retry_after = _retry_after(exc.response)
        return LLMRateLimited(
            _("The AI service is busy (rate limited). Please try again in a minute."), retry_after=retry_after
        )
    if isinstance(exc, openai.NotFoundError):
        return LLMModelNotFound(
            _("The model “%(model)s” is not available at the AI service. An admin must choose another model.")
            % {"model": model}
        )
    if isinstance(exc, openai.BadRequestError):
        if getattr(exc, "code", None) in SAFETY_CODES:
            return LLMContentRefused(
                _(
                    "The AI service refused this request because of its safety rules. "
                    "Please describe something else or word it differently."
                )
            )
        if getattr(exc, "code", None) == "context_length_exceeded":
            return LLMContextTooLong(
                _("The conversation is too long for the model. Start a new conversation with /new.")
            )
        return LLMBadRequest(_("The AI service rejected the request: %(reason)s") % {"reason": exc.message})
    if isinstance(exc, openai.APIStatusError):
        return LLMUnavailable(
            _("The AI service had an error (HTTP %(status)s). Please try again in a minute.")
            % {"status": exc.status_code}
        )
    return LLMStreamBroken(_("The answer was interrupted: the connection to the AI service broke."))


def _retry_after(response: httpx2.Response | None) -> float | None:
    if response is None:
        return None
    try:
        return float(response.headers.get("retry-after", ""))
    except ValueError:
        return None


def _usage_from(raw: Any, model: str) -> Usage:
    details = getattr(raw, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", 0) or 0
    return Usage(
        input_tokens=raw.prompt_tokens or 0,
        output_tokens=raw.completion_tokens or 0,
        cached_input_tokens=cached,
        model=model,
    )


def _messages_param(messages: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The messages as request parameters, sent as they are.

    The SDK type-checks and transforms `messages` item by item in Python: about 0.2 ms a message here, so
    90 ms for a long conversation's context. Plain chat messages need no transforming, so they go in
    `extra_body` (the SDK's documented way to send JSON fields as given), which replaces the empty list.
    """
    return {"messages": [], "extra_body": {"messages": list(messages)}}


# --- Tool calls: the Chat Completions wire format ------------------------------------------------


def tool_spec(*, name: str, description: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """A function the model may call, as the `tools` parameter lists it."""
    schema = parameters or {"type": "object", "properties": {}}
    return {"type": "function", "function": {"name": name, "description": description, "parameters": schema}}


def assistant_tool_calls_message(calls: Sequence[ToolCall], *, text: str = "") -> dict[str, Any]:
    """The assistant's turn that asked for `calls`, as it goes back into the conversation."""
    return {
        "role": "assistant",
        "content": text or None,
        "tool_calls": [
            {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
            for call in calls
        ],
    }


def tool_result_message(*, call_id: str, content: str) -> dict[str, Any]:
    """A tool's result for the model: always a `tool` message, never system or user text."""
    return {"role": "tool", "tool_call_id": call_id, "content": content}


class _ToolCallAssembler:
    """Builds whole calls from streamed pieces: the id and name come first, the arguments in fragments.

    Calls are told apart by `index`; some servers (Ollama) reuse index 0 for every call of a parallel batch
    and tell them apart only by a new id, so a new id at an index already in use starts another call.
    """

    def __init__(self) -> None:
        self._calls: list[dict[str, Any]] = []
        self._slot_of_index: dict[int, int] = {}

    def add(self, pieces: Sequence[Any]) -> None:
        for piece in pieces:
            index = piece.index if piece.index is not None else 0
            slot = self._slot_of_index.get(index)
            known = self._calls[slot] if slot is not None else None
            if known is None or (piece.id and known["id"] and piece.id != known["id"]):
                self._calls.append({"id": piece.id or "", "name": "", "arguments": []})
                slot = self._slot_of_index[index] = len(self._calls) - 1
                known = self._calls[slot]
            if piece.id and not known["id"]:
                known["id"] = piece.id
            function = piece.function
            if function is not None:
                if function.name:
                    known["name"] += function.name
                if function.arguments:
                    known["arguments"].append(function.arguments)

    def calls(self) -> tuple[ToolCall, ...]:
        return tuple(
            ToolCall(
                # A server that sends no ids still needs each result matched to its call.
                id=call["id"] or f"call_{uuid.uuid4().hex[:24]}",
                name=call["name"],
                arguments="".join(call["arguments"]),
            )
            for call in self._calls
            if call["name"]
        )


async def chat_stream(
    *,
    messages: Sequence[dict[str, Any]],
    model: str,
    temperature: float | None = None,
    max_tokens: int | None = None,
    tools: Sequence[dict[str, Any]] | None = None,
    tool_choice: str | None = None,
) -> AsyncIterator[str | Usage | ToolCalls]:
    """Stream an answer: text deltas as they arrive, the provider's `Usage` if it sent one, and at the end
    `ToolCalls` when the model asked for functions from `tools` instead of (or after) writing text.

    A server that refuses `tools` raises LLMToolsUnsupported before anything was streamed.
    """
    client = get_client()
    params: dict[str, Any] = {
        "model": model,
        "stream": True,
        "stream_options": {"include_usage": True},
        **_messages_param(messages),
    }
    if temperature is not None:
        params["temperature"] = temperature
    if max_tokens is not None:
        params["max_tokens"] = max_tokens
    if tools:
        params["extra_body"]["tools"] = list(tools)
        if tool_choice is not None:
            params["extra_body"]["tool_choice"] = tool_choice
    try:
        async with asyncio.timeout(settings.OPENAI_FIRST_TOKEN_DEADLINE):
            stream = await client.chat.completions.create(**params)
    except TimeoutError as exc:
        raise LLMTimeout(_("The AI service did not answer in time. Please try again in a minute.")) from exc
    except Exception as exc:
        raise _translate(exc, model=model, tools_sent=bool(tools)) from exc
    assembler = _ToolCallAssembler()
    try:
        async for chunk in stream:
            if chunk.choices:
                delta = chunk.choices[0].delta
                if delta is not None:
                    if delta.content:
                        yield delta.content
                    if delta.tool_calls:
                        assembler.add(delta.tool_calls)
            if chunk.usage is not None:
                yield _usage_from(chunk.usage, chunk.model or model)
        calls = assembler.calls()
        if calls:
            yield ToolCalls(calls)
    except openai.APIStatusError as exc:
        raise _translate(exc, model=model, tools_sent=bool(tools)) from exc
    except Exception as exc:
        # Whatever breaks once the answer has started (a dropped connection, a read timeout) cuts it short.
        raise LLMStreamBroken(_("The answer was interrupted: the connection to the AI service broke.")) from exc
    finally:
        await stream.close()


async def chat_complete(
    *,
    messages: Sequence[dict[str, Any]],
    model: str,
    temperature: float | None = None,
    max_tokens: int | None = None,
) -> tuple[str, Usage]:
    """One non-streamed answer and its usage (summaries, titles)."""
    client = get_client()
    params: dict[str, Any] = {"model": model, **_messages_param(messages)}
    if temperature is not None:
        params["temperature"] = temperature
    if max_tokens is not None:
        params["max_tokens"] = max_tokens
    try:
        response = await client.chat.completions.create(**params)
    except Exception as exc:
        raise _translate(exc, model=model) from exc
    text = response.choices[0].message.content or "" if response.choices else ""
    if response.usage is None:
        usage = Usage(
            input_tokens=count_message_tokens(messages, model=model),
            output_tokens=count_tokens(text, model=model),
            model=model,
        )
    else:
        usage = _usage_from(response.usage, response.model or model)
    return text.strip(), usage


async def transcribe(*, data: bytes, filename: str, model: str | None = None) -> Transcript:
    """Turn audio into text; the duration comes back from the provider for billing."""
    client = get_client()
    model = model or settings.OPENAI_TRANSCRIPTION_MODEL
    try:
        result = await client.audio.transcriptions.create(
            model=model, file=(filename, data), response_format="verbose_json"
        )
    except Exception as exc:
        raise _translate(exc, model=model) from exc
    duration = getattr(result, "duration", None)
    return Transcript(
        text=(result.text or "").strip(),
        audio_seconds=Decimal(str(duration)) if duration is not None else Decimal("0"),
        model=model,
    )


@dataclass(frozen=True)
class Embeddings:
    """One vector per input, in order, and the provider's usage for the call."""

    vectors: list[list[float]]
    usage: Usage
    # The provider reported no usage: the tokens were counted by Jarvis.
    estimated: bool = False


def embedding_dimensions_param(model: str, dimensions: int | None) -> int | None:
    """The `dimensions` to ask for: only the text-embedding-3 models can shorten their vectors."""
    return dimensions if dimensions and model.startswith("text-embedding-3") else None


async def embed(*, texts: Sequence[str], model: str, dimensions: int | None = None) -> Embeddings:
    """Embed `texts` in one call; `dimensions` shortens the vectors where the model supports it."""
    client = get_client()
    params: dict[str, Any] = {"model": model, "input": list(texts), "encoding_format": "float"}
    wanted = embedding_dimensions_param(model, dimensions)
    if wanted:
        params["dimensions"] = wanted
    try:
        response = await client.embeddings.create(**params)
    except Exception as exc:
        raise _translate(exc, model=model) from exc
    vectors = [item.embedding for item in sorted(response.data, key=lambda item: item.index)]
    if len(vectors) != len(texts):
        raise LLMBadRequest(_("The AI service returned a wrong number of embeddings. Please try again."))
    raw = response.usage
    reported = getattr(raw, "prompt_tokens", None) if raw is not None else None
    estimated = reported is None
    if estimated:
        reported = sum(count_tokens(text, model=model) for text in texts)
    usage = Usage(input_tokens=reported, output_tokens=0, model=response.model or model)
    return Embeddings(vectors=vectors, usage=usage, estimated=estimated)


# --- Pictures -----------------------------------------------------------------------------------

# What the provider calls a request its safety system refused (GPT image models, dall-e, chat).
SAFETY_CODES = frozenset({"moderation_blocked", "content_policy_violation", "content_filter"})
# A picture fetched from a URL (providers that do not send it inline) is read up to this size.
MAX_PICTURE_BYTES = 50 * 1024 * 1024


def _bills_per_picture(model: str) -> bool:
    # dall-e models answer with a URL unless asked for base64; GPT image models refuse the parameter.
    return model.startswith("dall-e")


def _image_client() -> openai.AsyncOpenAI:
    # A picture takes much longer than an answer starts; and no retries: each attempt may be billed.
    return get_client().with_options(timeout=httpx2.Timeout(settings.OPENAI_IMAGE_TIMEOUT, connect=10.0), max_retries=0)


def _option_refused(exc: openai.BadRequestError, *, size: str, quality: str) -> LLMError | None:
    param = (getattr(exc, "param", None) or "").lower()
    text = (exc.message or "").lower()
    if param == "size" or (not param and size and size.lower() in text):
        return LLMUnsupportedOption(
            _(
                "The image model does not accept the picture size “%(size)s”: %(reason)s "
                "An admin can choose another size for the persona."
            )
            % {"size": size, "reason": exc.message}
        )
    if param == "quality" or (not param and quality and f"'{quality.lower()}'" in text):
        return LLMUnsupportedOption(
            _(
                "The image model does not accept the picture quality “%(quality)s”: %(reason)s "
                "An admin can choose another quality for the persona."
            )
            % {"quality": quality, "reason": exc.message}
        )
    return None


def _picture_timeout() -> LLMTimeout:
    return LLMTimeout(
        _(
            "The picture was not ready within %(seconds)d seconds. Please try again in a minute, "
            "perhaps with a simpler description."
        )
        % {"seconds": int(settings.OPENAI_IMAGE_TIMEOUT)}
    )


async def _picture_call(call: Any, *, model: str, size: str, quality: str) -> Any:
    try:
        async with asyncio.timeout(settings.OPENAI_IMAGE_TIMEOUT):
            return await call
    except TimeoutError as exc:
        raise _picture_timeout() from exc
    except openai.APITimeoutError as exc:
        raise _picture_timeout() from exc
    except openai.BadRequestError as exc:
        refused = None
        if getattr(exc, "code", None) not in SAFETY_CODES:
            refused = _option_refused(exc, size=size, quality=quality)
        raise (refused or _translate(exc, model=model)) from exc
    except Exception as exc:
        raise _translate(exc, model=model) from exc


async def _picture_from(response: Any, *, model: str, size: str, quality: str) -> Picture:
    item = response.data[0] if response.data else None
    if item is None:
        raise LLMBadRequest(_("The image service answered without a picture. Please try again."))
    if item.b64_json:
        try:
            data = base64.b64decode(item.b64_json, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise LLMStreamBroken(_("The image service sent a picture Jarvis cannot read. Please try again.")) from exc
    elif item.url:
        data = await _download_picture(item.url, model=model)
    else:
        raise LLMBadRequest(_("The image service answered without a picture. Please try again."))
    usage = None
    image_in = image_out = 0
    raw = getattr(response, "usage", None)
    if raw is not None:
        usage = Usage(input_tokens=raw.input_tokens or 0, output_tokens=raw.output_tokens or 0, model=model)
        details_in = getattr(raw, "input_tokens_details", None)
        image_in = (getattr(details_in, "image_tokens", 0) or 0) if details_in is not None else 0
        details_out = getattr(raw, "output_tokens_details", None)
        # GPT image models make image tokens only, unless they say otherwise.
        image_out = (getattr(details_out, "image_tokens", 0) or 0) if details_out is not None else usage.output_tokens
    return Picture(
        data=data,
        model=model,
        size=getattr(response, "size", None) or size,
        quality=getattr(response, "quality", None) or quality,
        revised_prompt=item.revised_prompt or "",
        usage=usage,
        image_input_tokens=image_in,
        image_output_tokens=image_out,
    )


async def _download_picture(url: str, *, model: str) -> bytes:
    try:
        async with httpx2.AsyncClient(timeout=httpx2.Timeout(60.0, connect=10.0)) as client:
            async with client.stream("GET", url) as response:
                response.raise_for_status()
                chunks, size = [], 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > MAX_PICTURE_BYTES:
                        raise LLMBadRequest(_("The image service sent a picture over 50 MB. Please try again."))
                    chunks.append(chunk)
                return b"".join(chunks)
    except httpx2.HTTPError as exc:
        logger.warning("Could not fetch the picture %s made: %s", model, exc.__class__.__name__)
        raise LLMUnavailable(_("Jarvis could not fetch the picture from the image service. Please try again.")) from exc


def _picture_options(*, model: str, size: str, quality: str) -> dict[str, Any]:
    options: dict[str, Any] = {"model": model, "n": 1}
    if size:
        options["size"] = size
    if quality:
        options["quality"] = quality
    if _bills_per_picture(model):
        options["response_format"] = "b64_json"
    return options


async def image_generate(*, prompt: str, model: str, size: str = "", quality: str = "") -> Picture:
    """Draw a picture from `prompt`; size and quality as given (empty: the model's default)."""
    options = _picture_options(model=model, size=size, quality=quality)
    call = _image_client().images.generate(prompt=prompt, **options)
    response = await _picture_call(call, model=model, size=size, quality=quality)
    return await _picture_from(response, model=model, size=size, quality=quality)


async def image_edit(
    *, prompt: str, image: bytes, filename: str, content_type: str, model: str, size: str = "", quality: str = ""
) -> Picture:
    """Change `image` as `prompt` says; the provider reports the input picture's tokens separately."""
    options = _picture_options(model=model, size=size, quality=quality)
    call = _image_client().images.edit(prompt=prompt, image=(filename, image, content_type), **options)
    response = await _picture_call(call, model=model, size=size, quality=quality)
    return await _picture_from(response, model=model, size=size, quality=quality)


# --- Speech -------------------------------------------------------------------------------------

# The provider reads at most this many characters per request.
SPEECH_MAX_CHARS = 4096
SPEECH_CONTENT_TYPES = {"opus": "audio/ogg", "mp3": "audio/mpeg", "aac": "audio/aac", "wav": "audio/wav"}


def bills_per_character(model: str) -> bool:
    # tts-1 and tts-1-hd are billed by characters and cannot stream events (which carry the usage).
    return model.startswith("tts-1")


async def speech(*, text: str, model: str, voice: str, response_format: str = "opus") -> Speech:
    """Read `text` out; token-billed models are asked for server-sent events, whose last one holds the usage."""
    client = get_client()
    params: dict[str, Any] = {"model": model, "input": text, "voice": voice, "response_format": response_format}
    if not bills_per_character(model):
        params["stream_format"] = "sse"
    usage: Usage | None = None
    try:
        async with client.audio.speech.with_streaming_response.create(**params) as response:
            if "text/event-stream" in response.headers.get("content-type", ""):
                data, usage = await _speech_events(response.iter_lines(), model=model)
            else:
                data = await response.read()
    except LLMError:
        raise
    except openai.BadRequestError as exc:
        if (getattr(exc, "param", None) or "") == "voice":
            raise LLMUnsupportedOption(
                _("The speech model does not know the voice “%(voice)s”: %(reason)s An admin can pick another one.")
                % {"voice": voice, "reason": exc.message}
            ) from exc
        raise _translate(exc, model=model) from exc
    except Exception as exc:
        raise _translate(exc, model=model) from exc
    if not data:
        raise LLMStreamBroken(_("The speech service sent no audio. Please try again."))
    return Speech(
        data=data,
        model=model,
        content_type=SPEECH_CONTENT_TYPES.get(response_format, "application/octet-stream"),
        characters=len(text),
        usage=usage,
    )


async def _speech_events(lines: AsyncIterator[str], *, model: str) -> tuple[bytes, Usage | None]:
    chunks: list[bytes] = []
    usage = None
    async for line in lines:
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if not payload or payload == "[DONE]":
            continue
        event = json.loads(payload)
        if event.get("type") == "speech.audio.delta":
            chunks.append(base64.b64decode(event.get("audio") or ""))
        elif event.get("type") == "speech.audio.done" and event.get("usage"):
            raw = event["usage"]
            usage = Usage(
                input_tokens=int(raw.get("input_tokens") or 0),
                output_tokens=int(raw.get("output_tokens") or 0),
                model=model,
            )
    if usage is None:
        raise LLMStreamBroken(_("The speech service stopped before the audio was finished. Please try again."))
    return b"".join(chunks), usage


# --- Token counting (offline: bpe-openai ships its vocabularies) ----------------------------------


# bpe-openai's Python wrapper reads three vocabularies into dicts when imported and copies one into every
# encoding it builds: 80 MB of the bot's memory for nothing, since its Rust tokenizer has its own tables and
# counts by itself. So the Rust module is loaded alone, without the package around it.
_BINDINGS = "bpe_openai._bindings"
# The models bpe-openai counts with cl100k; every other one, newer or not OpenAI's, with o200k (the closest).
CL100K_MODELS = frozenset(
    {
        "gpt-3.5", "gpt-3.5-turbo", "gpt-3.5-turbo-0301", "gpt-3.5-turbo-0401", "gpt-3.5-turbo-0125",
        "gpt-35-turbo", "gpt-4", "gpt-4-0314", "gpt-4-0613", "gpt-4-32k", "text-embedding-ada-002",
        "text-embedding-3-small", "text-embedding-3-large",
    }
)  # fmt: skip


def _bindings() -> Any:
    module = sys.modules.get(_BINDINGS)  # already loaded by the package, if something imported it
    if module is None:
        package = importlib.util.find_spec("bpe_openai")  # finds the package without running its __init__
        if package is None or not package.submodule_search_locations:
            raise LLMConfigError("The bpe-openai package is missing: install the requirements again.")
        library = next(Path(package.submodule_search_locations[0]).glob("_bindings*.so"))
        spec = importlib.util.spec_from_file_location(_BINDINGS, library)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[_BINDINGS] = module  # a Rust extension may be initialised only once per process
    return module


@cache
def _tokenizer(model: str) -> Any:
    return _bindings().tokenizer_for_encoding("cl100k_base" if model in CL100K_MODELS else "o200k_base")


# The tokenizer is given long input in slices (a token or two off at each cut).
COUNT_SLICE_CHARS = 200_000


def count_tokens(text: str, *, model: str) -> int:
    """Tokens in `text` for `model`, counted locally."""
    if not text:
        return 0
    if len(text) <= COUNT_SLICE_CHARS:
        return _count(text, model)
    tokenizer = _tokenizer(model)
    return sum(
        tokenizer.count(text[start : start + COUNT_SLICE_CHARS]) for start in range(0, len(text), COUNT_SLICE_CHARS)
    )


@lru_cache(maxsize=256)
def _count(text: str, model: str) -> int:
    # System prompts and summaries are counted again for every answer; remembering them saves the work.
    return _tokenizer(model).count(text)


def count_message_tokens(messages: Sequence[dict[str, Any]], *, model: str) -> int:
    """Tokens a list of chat messages takes in a request, including the per-message overhead."""
    total = TOKENS_REPLY_PRIMING
    for message in messages:
        total += TOKENS_PER_MESSAGE
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            total += count_tokens(function.get("name", ""), model=model)
            total += count_tokens(function.get("arguments", ""), model=model) + TOKENS_PER_MESSAGE
        content = message.get("content")
        if isinstance(content, str):
            total += count_tokens(content, model=model)
        elif isinstance(content, list):
            for part in content:
                if part.get("type") == "text":
                    total += count_tokens(part.get("text", ""), model=model)
                else:
                    total += TOKENS_PER_IMAGE
    return total
