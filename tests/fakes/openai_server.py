"""A fake OpenAI-compatible server on 127.0.0.1: chat completions (plain and streamed, tool calls), transcription,
pictures (generations and edits), speech, embeddings, faults.

It runs in its own thread and event loop, so synchronous tests, async tests and subprocesses (the bot run
by `manage.py runbot`) can all talk to it over real HTTP. Tests script what the next requests get with
`enqueue(Behaviour(...))`; every request and every usage figure it reported is kept for assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import itertools
import json
import logging
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import bpe_openai
from aiohttp import web

from tests.fakes.files import ogg_opus_silence, png_picture
from tests.fakes.loopback import ThreadedApp

logger = logging.getLogger(__name__)
_encoding = bpe_openai.get_encoding("o200k_base")


def count(text: str) -> int:
    return len(_encoding.encode(text)) if text else 0


@dataclass
class Behaviour:
    """What the fake does with one request. Defaults: answer at once, echoing the last user message."""

    text: str | None = None
    status: int = 200
    error_code: str | None = None
    error_message: str = "Fake error"
    retry_after: float | None = None
    delay: float = 0.0  # before the response starts
    chunk_delay: float = 0.0  # between streamed chunks
    chunk_chars: int = 8  # characters per streamed delta
    cut_after: int | None = None  # stream this many chunks, then drop the connection
    include_usage: bool = True
    cached_tokens: int = 0
    usage: dict[str, int] | None = None  # override the computed usage
    transcript: str = "This is a fake transcript."
    duration: float = 3.0
    error_param: str | None = None
    # Pictures: the picture sent back (PNG), and bytes of padding that make its file bigger but not its size.
    picture: tuple[int, int] = (64, 64)
    picture_padding: int = 0
    # Speech: seconds of (silent) OGG/Opus audio sent back.
    speech_seconds: float = 1.0
    # Function calls to stream instead of (or after) `text`: {"name": ..., "arguments": dict or str, "id": ...}.
    # Streamed as OpenAI does: id and name first, the arguments in fragments of `args_chunk_chars`.
    tool_calls: list[dict[str, Any]] | None = None
    args_chunk_chars: int = 7
    # Stream every call whole at index 0, telling them apart by id only (as Ollama does).
    same_index: bool = False


@dataclass
class Served:
    """One request as the fake saw it and what it answered."""

    path: str
    body: dict[str, Any]
    status: int
    text: str = ""
    usage: dict[str, Any] | None = None
    started: float = 0.0
    finished: float = 0.0
    form: dict[str, Any] = field(default_factory=dict)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)

    @property
    def tool_names(self) -> list[str]:
        """The functions the request offered."""
        return [tool["function"]["name"] for tool in self.body.get("tools") or []]


def default_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages", [])):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                content = " ".join(p.get("text", "") for p in content if p.get("type") == "text")
                return f"Echo: {content} (with image)"
            return f"Echo: {content}"
    return "Echo: (nothing)"


_EMBEDDING_TERMS = re.compile(r"[\u3040-\u30ff\u3400-\u9fff]|[^\W_]+")


def fake_embedding(text: str, dimensions: int) -> list[float]:
    """A deterministic embedding: hashed words (and CJK character bigrams), so shared words mean similar vectors."""
    vector = [0.0] * dimensions
    found = _EMBEDDING_TERMS.findall(text.lower())
    terms = [t for t in found if len(t) > 1 or not t.isascii()]
    cjk = [t for t in terms if len(t) == 1]
    terms = [t for t in terms if len(t) > 1] + [a + b for a, b in itertools.pairwise(cjk)]
    for term in terms:
        digest = hashlib.blake2b(term.encode(), digest_size=8).digest()
        index = int.from_bytes(digest[:4], "little") % dimensions
        vector[index] += 1.0 if digest[4] & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


# What the real API accepts, so that a persona asking for something else gets the real API's error.
PICTURE_SIZES = {
    "gpt-image": ("1024x1024", "1024x1536", "1536x1024", "auto"),
    "dall-e-3": ("1024x1024", "1792x1024", "1024x1792"),
    "dall-e-2": ("256x256", "512x512", "1024x1024"),
}
# Image tokens of a GPT image model's picture by shape and quality (OpenAI's published table).
PICTURE_TOKENS = {
    ("square", "low"): 272, ("square", "medium"): 1056, ("square", "high"): 4160,
    ("long", "low"): 408, ("long", "medium"): 1584, ("long", "high"): 6240,
}  # fmt: skip
# What the fake counts for each picture sent to be edited.
EDIT_IMAGE_TOKENS = 194
VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse")


def _sizes_for(model: str) -> tuple[str, ...]:
    return next(
        (sizes for prefix, sizes in PICTURE_SIZES.items() if model.startswith(prefix)), PICTURE_SIZES["gpt-image"]
    )


def _quoted(values: tuple[str, ...]) -> str:
    quoted = [f"'{value}'" for value in values]
    return ", ".join(quoted[:-1]) + f", and {quoted[-1]}"


def _tool_calls(behaviour: Behaviour) -> list[dict[str, Any]]:
    """The behaviour's calls with ids and JSON text arguments."""
    calls = []
    for number, call in enumerate(behaviour.tool_calls or ()):
        arguments = call.get("arguments", {})
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments)
        calls.append({"id": call.get("id") or f"call_fake{number}_{time.monotonic_ns()}", "name": call["name"],
                      "arguments": arguments})  # fmt: skip
    return calls


def _tool_call_deltas(calls: list[dict[str, Any]], behaviour: Behaviour) -> list[dict[str, Any]]:
    """The `delta` objects that stream `calls` the way OpenAI does (or, `same_index`, the way Ollama does)."""
    deltas = []
    for index, call in enumerate(calls):
        if behaviour.same_index:
            whole = {"name": call["name"], "arguments": call["arguments"]}
            deltas.append({"tool_calls": [{"index": 0, "id": call["id"], "type": "function", "function": whole}]})
            continue
        opening = {
            "index": index,
            "id": call["id"],
            "type": "function",
            "function": {"name": call["name"], "arguments": ""},
        }
        deltas.append({"tool_calls": [opening]})
        size = behaviour.args_chunk_chars
        for start in range(0, len(call["arguments"]), size):
            fragment = call["arguments"][start : start + size]
            deltas.append({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})
    return deltas


def prompt_tokens(body: dict[str, Any]) -> int:
    total = 3
    for message in body.get("messages", []):
        total += 3
        for call in message.get("tool_calls") or ():
            total += count(call["function"]["name"]) + count(call["function"]["arguments"]) + 3
        content = message.get("content")
        if isinstance(content, str):
            total += count(content)
        elif isinstance(content, list):
            total += sum(count(p.get("text", "")) if p.get("type") == "text" else 2833 for p in content)
    return total


class FakeOpenAI:
    """The server and its script; thread-safe for the test thread and the server thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host, self.port = host, port
        self._lock = threading.Lock()
        self._script: dict[str, deque[Behaviour]] = {
            "chat": deque(),
            "transcription": deque(),
            "images": deque(),
            "speech": deque(),
            "embeddings": deque(),
        }
        self.default = Behaviour()
        # When the script is empty: a function of the request body that decides (benchmarks), if set.
        self.responder: Callable[[dict[str, Any]], Behaviour] | None = None
        # Like a local model without function calling: any request with `tools` gets HTTP 400.
        self.rejects_tools = False
        self.served: list[Served] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._server: ThreadedApp | None = None
        self._generation = 0

    # --- control ---

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def enqueue(self, *behaviours: Behaviour, endpoint: str = "chat") -> None:
        with self._lock:
            self._script[endpoint].extend(behaviours)

    def reset(self) -> None:
        with self._lock:
            for queue in self._script.values():
                queue.clear()
            self.default = Behaviour()
            self.responder = None
            self.rejects_tools = False
            self.served = []
            self.in_flight = 0
            self.max_in_flight = 0
            self._generation += 1

    def chat_requests(self) -> list[Served]:
        with self._lock:
            return [s for s in self.served if s.path.endswith("/chat/completions")]

    def embedding_requests(self) -> list[Served]:
        with self._lock:
            return [s for s in self.served if s.path.endswith("/embeddings")]

    def image_requests(self) -> list[Served]:
        with self._lock:
            return [s for s in self.served if "/images/" in s.path]

    def speech_requests(self) -> list[Served]:
        with self._lock:
            return [s for s in self.served if s.path.endswith("/audio/speech")]

    def _next(self, endpoint: str, body: dict[str, Any] | None = None) -> Behaviour:
        with self._lock:
            if self._script[endpoint]:
                return self._script[endpoint].popleft()
            responder = self.responder
        if responder is not None and body is not None:
            return responder(body)
        return self.default

    def _record(self, served: Served) -> None:
        with self._lock:
            self.served.append(served)

    def _enter(self) -> int:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return self._generation

    def _leave(self, generation: int) -> None:
        # A request left over from before a reset must not disturb the new count.
        with self._lock:
            if generation == self._generation:
                self.in_flight -= 1

    # --- HTTP ---

    def _error(self, behaviour: Behaviour) -> web.Response:
        headers = {}
        if behaviour.retry_after is not None:
            headers["Retry-After"] = str(behaviour.retry_after)
        body = {
            "error": {
                "message": behaviour.error_message,
                "type": "fake_error",
                "param": behaviour.error_param,
                "code": behaviour.error_code,
            }
        }
        return web.json_response(body, status=behaviour.status, headers=headers)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if self.rejects_tools and body.get("tools"):
            refusal = Behaviour(
                status=400, error_message=f"registry.ollama.ai/library/{body.get('model')} does not support tools"
            )
            self._record(Served(path=request.path, body=body, status=400, started=time.monotonic()))
            return self._error(refusal)
        behaviour = self._next("chat", body)
        served = Served(path=request.path, body=body, status=behaviour.status, started=time.monotonic())
        generation = self._enter()
        try:
            if behaviour.delay:
                await asyncio.sleep(behaviour.delay)
            if behaviour.status != 200:
                self._record(served)
                return self._error(behaviour)
            calls = _tool_calls(behaviour)
            default = "" if calls else default_text(body)
            text = behaviour.text if behaviour.text is not None else default
            served.tool_calls = calls
            usage = behaviour.usage or {
                "prompt_tokens": prompt_tokens(body),
                "completion_tokens": count(text) + sum(count(c["name"] + c["arguments"]) for c in calls),
            }
            usage = {
                **usage,
                "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"],
                "prompt_tokens_details": {"cached_tokens": behaviour.cached_tokens},
            }
            served.text = text
            model = body.get("model", "gpt-4o-mini")
            if not body.get("stream"):
                served.usage = usage
                served.finished = time.monotonic()
                self._record(served)
                return web.json_response(
                    {
                        "id": "chatcmpl-fake",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": model,
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": text},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": usage,
                    }
                )
            return await self._stream(request, body, behaviour, served, text, usage, model)
        finally:
            self._leave(generation)

    async def _stream(
        self,
        request: web.Request,
        body: dict[str, Any],
        behaviour: Behaviour,
        served: Served,
        text: str,
        usage: dict[str, Any],
        model: str,
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)

        def chunk(delta: dict[str, Any] | None, finish: str | None = None, with_usage: bool = False) -> bytes:
            payload = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}],
                "usage": usage if with_usage else None,
            }
            return f"data: {json.dumps(payload)}\n\n".encode()

        pieces = [text[i : i + behaviour.chunk_chars] for i in range(0, len(text), behaviour.chunk_chars)]
        calls = served.tool_calls
        await response.write(chunk({"role": "assistant", "content": None if calls and not text else ""}))
        sent = ""
        try:
            for index, piece in enumerate(pieces):
                if behaviour.cut_after is not None and index >= behaviour.cut_after:
                    served.text = sent
                    served.finished = time.monotonic()
                    self._record(served)
                    # Drop the connection mid-stream, as a crashed upstream would.
                    request.transport.close()
                    return response
                if behaviour.chunk_delay:
                    await asyncio.sleep(behaviour.chunk_delay)
                await response.write(chunk({"content": piece}))
                sent += piece
            for delta in _tool_call_deltas(calls, behaviour):
                if behaviour.chunk_delay:
                    await asyncio.sleep(behaviour.chunk_delay)
                await response.write(chunk(delta))
            await response.write(chunk({}, finish="tool_calls" if calls else "stop"))
            include = (body.get("stream_options") or {}).get("include_usage") and behaviour.include_usage
            if include:
                await response.write(chunk(None, with_usage=True))
                served.usage = usage
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            served.text = sent
            served.status = 499  # the client went away
            served.finished = time.monotonic()
            self._record(served)
            raise
        served.finished = time.monotonic()
        self._record(served)
        return response

    async def _transcribe(self, request: web.Request) -> web.Response:
        behaviour = self._next("transcription")
        form: dict[str, Any] = {}
        reader = await request.multipart()
        async for part in reader:
            if part.filename:
                data = await part.read()
                form["file_name"], form["file_size"] = part.filename, len(data)
            else:
                form[part.name] = await part.text()
        served = Served(path=request.path, body={}, status=behaviour.status, form=form, started=time.monotonic())
        self._record(served)
        if behaviour.delay:
            await asyncio.sleep(behaviour.delay)
        if behaviour.status != 200:
            return self._error(behaviour)
        served.text = behaviour.transcript
        return web.json_response(
            {"task": "transcribe", "language": "english", "duration": behaviour.duration, "text": behaviour.transcript}
        )

    async def _embeddings(self, request: web.Request) -> web.Response:
        body = await request.json()
        behaviour = self._next("embeddings")
        served = Served(path=request.path, body=body, status=behaviour.status, started=time.monotonic())
        if behaviour.delay:
            await asyncio.sleep(behaviour.delay)
        if behaviour.status != 200:
            served.finished = time.monotonic()
            self._record(served)
            return self._error(behaviour)
        inputs = body.get("input", [])
        inputs = [inputs] if isinstance(inputs, str) else inputs
        dimensions = int(body.get("dimensions") or 1536)
        tokens = sum(count(text) for text in inputs)
        usage = behaviour.usage or {"prompt_tokens": tokens, "total_tokens": tokens}
        served.usage = usage
        served.finished = time.monotonic()
        self._record(served)
        data = [
            {"object": "embedding", "index": index, "embedding": fake_embedding(text, dimensions)}
            for index, text in enumerate(inputs)
        ]
        payload: dict[str, Any] = {"object": "list", "data": data, "model": body.get("model", "")}
        if behaviour.include_usage:
            payload["usage"] = usage
        return web.json_response(payload)

    def _invalid(self, param: str, value: str, allowed: tuple[str, ...]) -> web.Response:
        message = f"Invalid value: '{value}'. Supported values are: {_quoted(allowed)}."
        body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": "invalid_value"}}
        return web.json_response(body, status=400)

    async def _picture(self, request: web.Request) -> web.Response:
        """images.generate (JSON) and images.edit (multipart): usage as GPT image models report it."""
        behaviour = self._next("images")
        form: dict[str, Any] = {}
        if request.content_type.startswith("multipart/"):
            images = []
            async for part in await request.multipart():
                if part.filename:
                    data = await part.read()
                    images.append({"name": part.filename, "size": len(data), "type": part.headers.get("Content-Type")})
                else:
                    form[part.name] = await part.text()
            form["images"] = images
            body = dict(form)
        else:
            body = await request.json()
        served = Served(path=request.path, body=body, status=behaviour.status, form=form, started=time.monotonic())
        self._record(served)
        if behaviour.delay:
            await asyncio.sleep(behaviour.delay)
        if behaviour.status != 200:
            return self._error(behaviour)
        model = str(body.get("model") or "dall-e-2")
        size = str(body.get("size") or "")
        quality = str(body.get("quality") or "")
        if size and size not in _sizes_for(model):
            served.status = 400
            return self._invalid("size", size, _sizes_for(model))
        picture = png_picture(*behaviour.picture, padding=behaviour.picture_padding)
        item: dict[str, Any] = {}
        if model.startswith("dall-e") and body.get("response_format") != "b64_json":
            served.status = 400
            return self._invalid("response_format", "url", ("b64_json",))
        item["b64_json"] = base64.b64encode(picture).decode("ascii")
        result: dict[str, Any] = {"created": int(time.time()), "data": [item]}
        if model.startswith("dall-e-3"):
            item["revised_prompt"] = f"A detailed picture of {body.get('prompt', '')}"
        if not model.startswith("dall-e"):
            shape = "square" if size in ("", "auto", "1024x1024") else "long"
            output = PICTURE_TOKENS[(shape, quality if quality in ("low", "high") else "medium")]
            text = count(str(body.get("prompt", "")))
            image = EDIT_IMAGE_TOKENS * len(form.get("images", []))
            result["usage"] = behaviour.usage or {
                "input_tokens": text + image,
                "input_tokens_details": {"text_tokens": text, "image_tokens": image},
                "output_tokens": output,
                "total_tokens": text + image + output,
            }
            result.update(size=size or "1024x1024", quality=quality or "medium", output_format="png")
            served.usage = result["usage"]
        served.finished = time.monotonic()
        return web.json_response(result)

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        """audio.speech: OGG/Opus as raw bytes, or as server-sent events whose last one carries the usage."""
        behaviour = self._next("speech")
        body = await request.json()
        served = Served(path=request.path, body=body, status=behaviour.status, started=time.monotonic())
        self._record(served)
        if behaviour.delay:
            await asyncio.sleep(behaviour.delay)
        if behaviour.status != 200:
            return self._error(behaviour)
        model = str(body.get("model", ""))
        if body.get("voice") not in VOICES:
            served.status = 400
            return self._invalid("voice", str(body.get("voice")), VOICES)
        audio = ogg_opus_silence(behaviour.speech_seconds)
        if body.get("stream_format") != "sse":
            served.text = body.get("input", "")
            return web.Response(body=audio, content_type="audio/ogg")
        if model.startswith("tts-1"):
            served.status = 400
            return self._invalid("stream_format", "sse", ("audio",))
        usage = behaviour.usage or {
            "input_tokens": count(str(body.get("input", ""))),
            "output_tokens": int(behaviour.speech_seconds * 83),
        }
        usage = {**usage, "total_tokens": usage["input_tokens"] + usage["output_tokens"]}
        served.usage = usage
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for start in range(0, len(audio), 4096):
            piece = base64.b64encode(audio[start : start + 4096]).decode("ascii")
            await response.write(f"data: {json.dumps({'type': 'speech.audio.delta', 'audio': piece})}\n\n".encode())
        await response.write(f"data: {json.dumps({'type': 'speech.audio.done', 'usage': usage})}\n\n".encode())
        await response.write_eof()
        served.finished = time.monotonic()
        return response

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model"}]})

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=50 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/audio/transcriptions", self._transcribe)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_post("/v1/images/generations", self._picture)
        app.router.add_post("/v1/images/edits", self._picture)
        app.router.add_post("/v1/audio/speech", self._speech)
        app.router.add_get("/v1/models", self._models)
        return app

    # --- lifecycle ---

    def start(self) -> FakeOpenAI:
        self._server = ThreadedApp(self.make_app, addresses=[(self.host, self.port)], name="fake-openai")
        [self.port] = self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    """Run the fake standalone (benchmarks): `python -m tests.fakes.openai_server --port 8001 --delay 2`."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer starts")
    parser.add_argument("--chunk-delay", type=float, default=0.0)
    args = parser.parse_args()
    fake = FakeOpenAI(port=args.port)
    fake.default = Behaviour(delay=args.delay, chunk_delay=args.chunk_delay)
    fake.start()
    print(fake.base_url, flush=True)  # noqa: T201
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        fake.stop()


if __name__ == "__main__":
    main()
