"""The model provider: the only module that imports `openai` (chat, transcription, embeddings, token counting)."""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import cache, lru_cache
from typing import Any

import bpe_openai
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


class LLMStreamBroken(LLMError):
    """The answer stopped arriving part-way through."""


# --- Results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """Token usage as reported by the provider."""

    input_tokens: int
    output_tokens: int
    cached_input_tokens: int = 0
    model: str = ""


@dataclass(frozen=True)
class Transcript:
    text: str
    audio_seconds: Decimal
    model: str


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


def _translate(exc: Exception, *, model: str) -> LLMError:
    """Map an SDK or transport error to a typed error whose text tells a person what to do."""
    if isinstance(exc, LLMError):
        return exc
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


async def chat_stream(
    *,
    messages: Sequence[dict[str, Any]],
    model: str,
    temperature: float | None = None,
    max_tokens: int | None = None,
) -> AsyncIterator[str | Usage]:
    """Stream an answer: yields text deltas as they arrive, then the provider's `Usage` if it sent one."""
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
    try:
        async with asyncio.timeout(settings.OPENAI_FIRST_TOKEN_DEADLINE):
            stream = await client.chat.completions.create(**params)
    except TimeoutError as exc:
        raise LLMTimeout(_("The AI service did not answer in time. Please try again in a minute.")) from exc
    except Exception as exc:
        raise _translate(exc, model=model) from exc
    try:
        async for chunk in stream:
            if chunk.choices:
                delta = chunk.choices[0].delta
                if delta is not None and delta.content:
                    yield delta.content
            if chunk.usage is not None:
                yield _usage_from(chunk.usage, chunk.model or model)
    except openai.APIStatusError as exc:
        raise _translate(exc, model=model) from exc
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


# --- Token counting (offline: bpe-openai ships its vocabularies) ----------------------------------


@cache
def _encoding(model: str) -> bpe_openai.Encoding:
    try:
        name = bpe_openai.encoding_name_for_model(model)
    except (KeyError, bpe_openai.UnsupportedModelError):
        # Newer and non-OpenAI models: o200k is the closest public vocabulary.
        name = "o200k_base"
    return bpe_openai.get_encoding(name)


def count_tokens(text: str, *, model: str) -> int:
    """Tokens in `text` for `model`, counted locally."""
    if not text:
        return 0
    return _count(text, model)


@lru_cache(maxsize=256)
def _count(text: str, model: str) -> int:
    # System prompts and summaries are counted again for every answer; remembering them saves the work.
    return len(_encoding(model).encode(text))


def count_message_tokens(messages: Sequence[dict[str, Any]], *, model: str) -> int:
    """Tokens a list of chat messages takes in a request, including the per-message overhead."""
    total = TOKENS_REPLY_PRIMING
    for message in messages:
        total += TOKENS_PER_MESSAGE
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
