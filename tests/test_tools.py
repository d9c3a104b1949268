"""Tools in the funnel: the loop, the built-ins, MCP, limits and failures, SSRF, the ledger per round, recovery."""

import asyncio
import json
import socket
import time
from decimal import Decimal
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from botapp import llm
from botapp.conversations import (
    ReplyFailed,
    conversation_reply,
    turn_accept,
    turn_answer,
    turn_for_pending_reply,
)
from botapp.models import (
    McpServer,
    Message,
    MessageStatus,
    ModelToolSupport,
    Profile,
    Role,
    Tool,
    ToolCall,
    ToolCallStatus,
    UsageKind,
    UsageRecord,
)
from botapp.tools import fetch, limits
from botapp.tools.registry import BuiltinTool, ToolError, ToolResult, builtin_tools_ensure, register
from botapp.tools.registry import _registry as registry
from botapp.usage import usage_record_create
from tests.factories import ConversationFactory
from tests.fakes.openai_server import Behaviour
from tests.fakes.tool_servers import ARTICLE_TITLE, McpTestServer
from tests.tools_helpers import BUILTINS, fake_reported_cost, mcp_server_add, persona_with_tools

pytest_plugins = ["tests.tools_support"]
pytestmark = pytest.mark.django_db(transaction=True)


def search(query: str, **extra: Any) -> dict[str, Any]:
    return {"name": "web_search", "arguments": {"query": query}, **extra}


def read(url: str) -> dict[str, Any]:
    return {"name": "read_web_page", "arguments": {"url": url}}


@sync_to_async
def conversation_with_tools(*names: str):
    persona_with_tools(*names)
    return ConversationFactory()


@sync_to_async
def calls_of(message_id: int) -> list[ToolCall]:
    return list(ToolCall.objects.filter(message_id=message_id).order_by("round", "position"))


@sync_to_async
def ledger_of(message_id: int) -> list[UsageRecord]:
    return list(UsageRecord.objects.filter(message_id=message_id).order_by("round"))


@sync_to_async
def ledger_total() -> Decimal:
    return sum((r.cost_usd for r in UsageRecord.objects.all()), Decimal("0"))


def tool_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in body["messages"] if m["role"] == "tool"]


async def one_page_read(fake_openai, url: str) -> ToolCall:
    """A conversation with the built-in tools in which the model reads `url` once, then answers: that call."""
    conversation = await conversation_with_tools(*BUILTINS)
    fake_openai.enqueue(Behaviour(tool_calls=[read(url)]), Behaviour(text="Read."))
    reply = await conversation_reply(conversation=conversation, text=f"Read {url}")
    [call] = await calls_of(reply.message.pk)
    return call


# --- The loop -------------------------------------------------------------------------------------


async def test_one_search_then_an_answer_each_round_billed_once(fake_openai, fake_web):
    """The model searches, gets the results as a tool message, answers; two ledger rows equal the fake's usage."""
    conversation = await conversation_with_tools(*BUILTINS)
    fake_openai.enqueue(
        Behaviour(tool_calls=[search("moon landing news")], args_chunk_chars=3),
        Behaviour(text="Jarvis reached the Moon on Tuesday [1]."),
    )
    reply = await conversation_reply(conversation=conversation, text="What happened on the Moon?")

    assert reply.text == "Jarvis reached the Moon on Tuesday [1]."
    first, second = fake_openai.chat_requests()
    assert sorted(first.tool_names) == sorted(BUILTINS)
    assert "not instructions" in first.body["messages"][0]["content"]
    assert fake_web.queries[0]["q"] == "moon landing news" and fake_web.queries[0]["format"] == "json"
    asked, result = second.body["messages"][-2:]
    assert asked["role"] == "assistant" and asked["tool_calls"][0]["function"] == {
        "name": "web_search", "arguments": '{"query": "moon landing news"}',
    }  # fmt: skip
    assert result == {"role": "tool", "tool_call_id": asked["tool_calls"][0]["id"], "content": result["content"]}
    assert "Result 1 for moon landing news" in result["content"] and "untrusted" in result["content"]
    assert all(m["role"] != "system" or "Result 1" not in m["content"] for m in second.body["messages"])

    [call] = await calls_of(reply.message.pk)
    assert (call.tool_name, call.status, call.round, call.position) == ("web_search", ToolCallStatus.OK, 1, 0)
    assert json.loads(call.arguments) == {"query": "moon landing news"} and call.result == result["content"]
    assert call.duration_ms is not None and call.user_id == conversation.user_id and len(call.sources) == 3
    records = await ledger_of(reply.message.pk)
    assert [(r.round, r.kind) for r in records] == [(1, UsageKind.CHAT), (2, UsageKind.CHAT)]
    assert [r.input_tokens for r in records] == [s.usage["prompt_tokens"] for s in (first, second)]
    assert sum(r.cost_usd for r in records) == fake_reported_cost(fake_openai) == reply.cost_usd > 0
    stored = await Message.objects.aget(pk=reply.message.pk)
    assert stored.input_tokens == sum(r.input_tokens for r in records) and stored.tool_tokens > 0


async def test_two_calls_in_one_turn_run_side_by_side_and_answer_in_order(fake_openai, fake_web):
    """Two calls streamed in one turn are both run, stored in one round, and answered with matching ids."""
    conversation = await conversation_with_tools(*BUILTINS)
    fake_openai.enqueue(
        Behaviour(
            text="Let me check. ",
            tool_calls=[
                search("weather Paris"),
                {"name": "current_datetime", "arguments": {"time_zone": "Asia/Tokyo"}},
            ],
        ),
        Behaviour(text="Sunny, and it is evening in Tokyo."),
    )
    reply = await conversation_reply(conversation=conversation, text="Weather in Paris and the time in Tokyo?")

    calls = await calls_of(reply.message.pk)
    assert [(c.round, c.position, c.tool_name, c.status) for c in calls] == [
        (1, 0, "web_search", "ok"), (1, 1, "current_datetime", "ok"),
    ]  # fmt: skip
    results = tool_messages(fake_openai.chat_requests()[1].body)
    assert [r["tool_call_id"] for r in results] == [c.call_id for c in calls]
    assert "Asia/Tokyo" in results[1]["content"] and "ISO 8601" in results[1]["content"]
    assert reply.text == "Let me check. \n\nSunny, and it is evening in Tokyo."


async def test_calls_that_share_index_zero_are_told_apart_by_their_ids(fake_openai, fake_web):
    """A server that streams every call at index 0 (Ollama) still gets each call run once."""
    conversation = await conversation_with_tools(*BUILTINS)
    fake_openai.enqueue(
        Behaviour(tool_calls=[search("one"), search("two")], same_index=True), Behaviour(text="Both done.")
    )
    reply = await conversation_reply(conversation=conversation, text="Search twice")
    assert [json.loads(c.arguments)["query"] for c in await calls_of(reply.message.pk)] == ["one", "two"]
    assert [q["q"] for q in fake_web.queries] == ["one", "two"] or sorted(q["q"] for q in fake_web.queries) == [
        "one", "two",
    ]  # fmt: skip


async def test_the_round_limit_ends_with_an_answer(fake_openai, fake_web, settings):
    """After TOOLS_MAX_ROUNDS tool rounds the model is asked to answer without calling; that answer stands."""
    settings.TOOLS_MAX_ROUNDS = 2
    conversation = await conversation_with_tools(*BUILTINS)
    fake_openai.enqueue(
        Behaviour(tool_calls=[search("a")]),
        Behaviour(tool_calls=[search("b")]),
        Behaviour(text="Here is what I found."),
    )
    reply = await conversation_reply(conversation=conversation, text="Dig deep")
    requests = fake_openai.chat_requests()
    assert len(requests) == 3
    assert [r.body.get("tool_choice") for r in requests] == [None, None, "none"]
    assert reply.text == "Here is what I found." and reply.message.status == MessageStatus.COMPLETE
    assert [r.round for r in await ledger_of(reply.message.pk)] == [1, 2, 3]


async def test_a_model_that_calls_past_the_limit_still_gets_an_answer(fake_openai, fake_web, settings):
    """A model that ignores tool_choice=none gets no more tools run: the answer is a sentence, not an error."""
    settings.TOOLS_MAX_ROUNDS = 1
    conversation = await conversation_with_tools(*BUILTINS)
    fake_openai.enqueue(Behaviour(tool_calls=[search("a")]), Behaviour(tool_calls=[search("again")]))
    reply = await conversation_reply(conversation=conversation, text="Loop forever")
    assert "tool rounds" in reply.text and reply.message.status == MessageStatus.COMPLETE
    assert [q["q"] for q in fake_web.queries] == ["a"]
    assert len(await calls_of(reply.message.pk)) == 1


async def test_invalid_arguments_and_unknown_tools_are_told_to_the_model(fake_openai, fake_web):
    """Broken JSON, a missing argument and an unknown tool each come back as an error result, on record."""
    conversation = await conversation_with_tools(*BUILTINS)
    fake_openai.enqueue(
        Behaviour(
            tool_calls=[
                {"name": "web_search", "arguments": '{"query": "unterminated'},
                {"name": "web_search", "arguments": {}},
                {"name": "launch_missiles", "arguments": {}},
            ]
        ),
        Behaviour(text="Sorry, those failed."),
    )
    reply = await conversation_reply(conversation=conversation, text="Try things")
    calls = await calls_of(reply.message.pk)
    assert [c.status for c in calls] == ["refused", "error", "refused"]
    assert "not valid JSON" in calls[0].error and "query" in calls[1].error and "launch_missiles" in calls[2].error
    assert all(m["content"].startswith("Error: ") for m in tool_messages(fake_openai.chat_requests()[1].body))
    assert fake_web.queries == []


async def test_a_persona_without_tools_sends_none(fake_openai, fake_web):
    """No tools enabled: the request carries no `tools` and the system prompt no tool note."""
    conversation = await conversation_with_tools()
    await conversation_reply(conversation=conversation, text="Hi")
    [request] = fake_openai.chat_requests()
    assert "tools" not in request.body and "not instructions" not in request.body["messages"][0]["content"]


async def test_a_tool_switched_off_everywhere_is_not_offered(fake_openai, fake_web, settings):
    """The admin's global switch and an unset SEARXNG_URL both keep a tool from the model."""
    conversation = await conversation_with_tools(*BUILTINS)
    await Tool.objects.filter(name="read_web_page").aupdate(enabled=False)
    settings.SEARXNG_URL = ""
    await conversation_reply(conversation=conversation, text="Hi")
    assert fake_openai.chat_requests()[0].tool_names == ["current_datetime"]


# --- Reading pages, and what it may not reach -----------------------------------------------------


async def test_reading_a_page_gives_the_model_its_readable_text(fake_openai, fake_web, settings):
    """trafilatura's text of the article reaches the model, without menus and footers; the page is a source."""
    settings.TOOLS_ALLOW_PRIVATE_URLS = True
    conversation = await conversation_with_tools(*BUILTINS)
    url = f"{fake_web.url}/article"
    fake_openai.enqueue(Behaviour(tool_calls=[read(url)]), Behaviour(text="It landed on Tuesday."))
    reply = await conversation_reply(conversation=conversation, text=f"Summarise {url}")
    [result] = tool_messages(fake_openai.chat_requests()[1].body)
    assert ARTICLE_TITLE in result["content"] and "landed on the Moon on Tuesday" in result["content"]
    assert "cookie banner" not in result["content"] and "Login" not in result["content"]
    assert reply.sources == [{"url": url, "title": ARTICLE_TITLE}]


PRIVATE_TARGETS = [
    ("http://127.0.0.1:{port}/secret", "127.0.0.1"),
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),
    ("http://[::ffff:127.0.0.1]:{port}/secret", "::ffff:7f00:1"),
    ("http://localhost:{port}/secret", "localhost"),
]


@pytest.mark.parametrize(("target", "host"), PRIVATE_TARGETS)
async def test_private_addresses_are_refused(fake_openai, fake_web, target, host):
    """Loopback, link-local (cloud metadata) and mapped addresses are refused before any request is made."""
    call = await one_page_read(fake_openai, target.format(port=fake_web.port))
    assert call.status == ToolCallStatus.ERROR and "private" in call.error and host.strip("[]") in call.error
    assert "secret is 42" not in call.result and fake_web.hits == []


@pytest.fixture
def public_name(monkeypatch, fake_web):
    """`news.example` resolves to 127.0.0.2, which these tests count as a public address."""
    original = fetch.address_allowed
    monkeypatch.setattr(fetch, "address_allowed", lambda address: address == "127.0.0.2" or original(address))

    async def lookup(self, host, port, family):
        if host == "news.example":
            return [{"hostname": host, "host": "127.0.0.2", "port": port, "family": socket.AF_INET, "proto": 0,
                     "flags": socket.AI_NUMERICHOST}]  # fmt: skip
        return await self._inner.resolve(host, port, family)

    monkeypatch.setattr(fetch.GuardedResolver, "_lookup", lookup)
    return fake_web.public_url("news.example")


async def test_a_public_name_that_redirects_to_a_private_address_is_refused(fake_openai, fake_web, public_name):
    """The public page is read, its redirect to 127.0.0.1 is not followed: every hop is checked."""
    conversation = await conversation_with_tools(*BUILTINS)
    fake_openai.enqueue(
        Behaviour(tool_calls=[read(f"{public_name}/article"), read(f"{public_name}/to-private")]),
        Behaviour(text="One of two."),
    )
    reply = await conversation_reply(conversation=conversation, text="Read both")
    public, redirected = await calls_of(reply.message.pk)
    assert public.status == ToolCallStatus.OK and ARTICLE_TITLE in public.result
    assert redirected.status == ToolCallStatus.ERROR and "127.0.0.1" in redirected.error
    assert "/to-private" in fake_web.hits and "/secret" not in fake_web.hits


async def test_private_addresses_are_read_when_the_setting_allows(fake_openai, fake_web, settings):
    """TOOLS_ALLOW_PRIVATE_URLS=true lets tools read an intranet address."""
    settings.TOOLS_ALLOW_PRIVATE_URLS = True
    call = await one_page_read(fake_openai, f"{fake_web.url}/secret")
    assert call.status == ToolCallStatus.OK and "secret is 42" in call.result


async def test_a_10_mb_page_is_read_up_to_the_cap(fake_openai, fake_web, settings):
    """A huge page is read only up to the byte cap, and the model gets at most the result cap."""
    settings.TOOLS_ALLOW_PRIVATE_URLS = True
    settings.TOOLS_TIMEOUT = 30.0
    call = await one_page_read(fake_openai, f"{fake_web.url}/big")
    assert call.status == ToolCallStatus.OK and "only its beginning was read" in call.result
    assert len(call.result) < limits.MAX_RESULT_CHARS + 200 and call.result_chars > limits.MAX_RESULT_CHARS
    assert "more characters left out" in tool_messages(fake_openai.chat_requests()[1].body)[0]["content"]


async def test_a_file_that_is_not_text_is_refused(fake_openai, fake_web, settings):
    """An image is not read: the model is told which content types Jarvis reads."""
    settings.TOOLS_ALLOW_PRIVATE_URLS = True
    call = await one_page_read(fake_openai, f"{fake_web.url}/image.png")
    assert call.status == ToolCallStatus.ERROR and "image/png" in call.error


async def test_a_slow_page_times_out_with_a_sentence(fake_openai, fake_web, settings):
    """A page slower than TOOLS_TIMEOUT ends the call as timed out; the answer goes on."""
    settings.TOOLS_ALLOW_PRIVATE_URLS = True
    settings.TOOLS_TIMEOUT = 1.0
    conversation = await conversation_with_tools(*BUILTINS)
    fake_openai.enqueue(Behaviour(tool_calls=[read(f"{fake_web.url}/slow?seconds=20")]), Behaviour(text="Too slow."))
    started = time.monotonic()
    reply = await conversation_reply(conversation=conversation, text="Read the slow page")
    assert time.monotonic() - started < 15
    [call] = await calls_of(reply.message.pk)
    assert call.status in (ToolCallStatus.TIMEOUT, ToolCallStatus.ERROR)
    assert "did not answer in time" in call.error or "took longer than 1 seconds" in call.error
    assert reply.text == "Too slow."


async def test_searxng_without_json_gives_the_admin_a_sentence(fake_openai, fake_web, settings):
    """A SearXNG that refuses JSON (403) is explained in the result: what the admin must change."""
    settings.SEARXNG_URL = f"{fake_web.url}/nojson"
    conversation = await conversation_with_tools(*BUILTINS)
    fake_openai.enqueue(Behaviour(tool_calls=[search("x")]), Behaviour(text="Search is broken."))
    reply = await conversation_reply(conversation=conversation, text="Search")
    [call] = await calls_of(reply.message.pk)
    assert call.status == ToolCallStatus.ERROR and "HTTP 404" in call.error


# --- MCP ------------------------------------------------------------------------------------------


async def test_mcp_tools_are_listed_and_called_with_the_auth_header(fake_openai, mcp_server):
    """The server's tools become Tool rows; a call reaches the real MCP server, header included."""
    server = await sync_to_async(mcp_server_add)(mcp_server)
    names = {t.remote_name: t.name async for t in Tool.objects.filter(server=server)}
    assert set(names) == {"forecast", "explode", "ponder", "flood"} and names["forecast"] == "weather__forecast"
    schema = (await Tool.objects.aget(name="weather__forecast")).input_schema
    assert schema["required"] == ["city"]
    conversation = await conversation_with_tools("weather__forecast")
    fake_openai.enqueue(
        Behaviour(tool_calls=[{"name": "weather__forecast", "arguments": {"city": "Oslo", "days": 2}}]),
        Behaviour(text="Sunny in Oslo."),
    )
    reply = await conversation_reply(conversation=conversation, text="Weather in Oslo?")
    [call] = await calls_of(reply.message.pk)
    assert call.status == ToolCallStatus.OK and call.result == "Forecast for Oslo: sunny, 21 °C, for the next 2 day(s)."
    assert mcp_server.seen_headers[-1]["authorization"] == "Bearer weather-secret"
    assert fake_openai.chat_requests()[0].tool_names == ["weather__forecast"]


async def test_an_mcp_tool_that_raises_times_out_or_floods_costs_a_sentence(fake_openai, mcp_server, settings):
    """Three bad calls at once: an exception, a tool slower than the limit, 10 MB of text; the answer comes."""
    settings.TOOLS_TIMEOUT = 2.0
    await sync_to_async(mcp_server_add)(mcp_server)
    conversation = await conversation_with_tools("weather__explode", "weather__ponder", "weather__flood")
    fake_openai.enqueue(
        Behaviour(
            tool_calls=[
                {"name": "weather__explode", "arguments": {}},
                {"name": "weather__ponder", "arguments": {"seconds": 60}},
                {"name": "weather__flood", "arguments": {}},
            ]
        ),
        Behaviour(text="The weather service is in trouble."),
    )
    started = time.monotonic()
    reply = await conversation_reply(conversation=conversation, text="Use the broken tools")
    assert time.monotonic() - started < 20
    explode, ponder, flood = await calls_of(reply.message.pk)
    assert explode.status == ToolCallStatus.ERROR and "reported an error" in explode.error
    assert ponder.status == ToolCallStatus.TIMEOUT and "2 seconds" in ponder.error
    assert flood.status in (ToolCallStatus.OK, ToolCallStatus.ERROR)
    assert len(flood.result) <= limits.MAX_RESULT_CHARS + 100
    assert reply.text == "The weather service is in trouble."


async def test_an_mcp_server_that_is_down_costs_a_sentence(fake_openai, settings):
    """A server that refuses connections: the call fails at once with a sentence, the answer still comes."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    server = await McpServer.objects.acreate(name="gone", url=f"http://127.0.0.1:{closed_port}/mcp")
    tool = await Tool.objects.acreate(name="gone__lookup", kind="mcp", server=server, remote_name="lookup",
                                      description="Look something up.")  # fmt: skip
    conversation = await conversation_with_tools(tool.name)
    fake_openai.enqueue(
        Behaviour(tool_calls=[{"name": "gone__lookup", "arguments": {}}]), Behaviour(text="That server is down.")
    )
    started = time.monotonic()
    reply = await conversation_reply(conversation=conversation, text="Look it up")
    assert time.monotonic() - started < 15
    [call] = await calls_of(reply.message.pk)
    assert call.status == ToolCallStatus.ERROR and "“gone” cannot be reached" in call.error
    assert reply.text == "That server is down."


async def test_listing_a_server_that_refuses_the_header_says_so(mcp_server):
    """A wrong auth header: listing fails with a sentence kept on the server row, no tools appear."""
    server = await McpServer.objects.acreate(name="wrongkey", url=mcp_server.url)
    from botapp.tools.services import tool_refresh_message

    message = await sync_to_async(tool_refresh_message)(server)
    await server.arefresh_from_db()
    assert "cannot be reached" in message and server.list_error and not await server.tools.aexists()


# --- Built-in tools that fail, and limits on the person --------------------------------------------


@pytest.fixture
def test_tool():
    """Register built-in tools the way a new capability would, for the length of one test."""
    added: list[str] = []

    def add(name: str, run) -> str:
        register(
            BuiltinTool(
                name=name, title=name, description=f"Test tool {name}.", parameters={"type": "object"}, run=run,
                label=lambda arguments, done: f"{name} {'done' if done else 'running'}",
            )
        )  # fmt: skip
        added.append(name)
        builtin_tools_ensure(Tool)
        return name

    yield add
    for name in added:
        registry.pop(name, None)


async def test_a_builtin_tool_that_raises_is_an_error_not_a_crash(fake_openai, test_tool):
    """An unexpected exception in a tool is logged and reported to the model as a failure."""

    async def broken(arguments, context):
        raise KeyError("boom")

    name = await sync_to_async(test_tool)("broken_tool", broken)
    conversation = await conversation_with_tools(name)
    fake_openai.enqueue(Behaviour(tool_calls=[{"name": name, "arguments": {}}]), Behaviour(text="It broke."))
    reply = await conversation_reply(conversation=conversation, text="Break it")
    [call] = await calls_of(reply.message.pk)
    assert call.status == ToolCallStatus.ERROR and "failed unexpectedly" in call.error and reply.text == "It broke."


async def test_no_tool_runs_for_a_person_over_budget(fake_openai, fake_web):
    """The first round spends the last of the budget: its calls are refused, nothing is searched."""
    conversation = await conversation_with_tools(*BUILTINS)
    await Profile.objects.aupdate_or_create(
        user_id=conversation.user_id, defaults={"daily_budget_usd": Decimal("0.0001")}
    )
    fake_openai.enqueue(
        Behaviour(tool_calls=[search("expensive")], usage={"prompt_tokens": 1000, "completion_tokens": 50})
    )
    with pytest.raises(ReplyFailed) as failure:
        await conversation_reply(conversation=conversation, text="Search for me")
    assert "daily budget" in str(failure.value)
    assert fake_web.queries == [] and len(fake_openai.chat_requests()) == 1
    [call] = await sync_to_async(list)(ToolCall.objects.all())
    assert call.status == ToolCallStatus.REFUSED and "daily budget" in call.error
    assert [r.round for r in await sync_to_async(list)(UsageRecord.objects.all())] == [1]


async def test_no_tool_runs_for_a_person_blocked_between_rounds(fake_openai, test_tool):
    """A person blocked while an answer is under way gets no further tool run."""

    async def block_me(arguments, context):
        await Profile.objects.filter(user_id=context.user_id).aupdate(is_blocked=True)
        return ToolResult(text="blocked")

    name = await sync_to_async(test_tool)("block_me", block_me)
    conversation = await conversation_with_tools(name)
    fake_openai.enqueue(
        Behaviour(tool_calls=[{"name": name, "arguments": {}}]), Behaviour(tool_calls=[{"name": name, "arguments": {}}])
    )
    with pytest.raises(ReplyFailed, match="not allowed"):
        await conversation_reply(conversation=conversation, text="Go")
    statuses = await sync_to_async(lambda: list(ToolCall.objects.order_by("round").values_list("status", flat=True)))()
    assert statuses == [ToolCallStatus.OK, ToolCallStatus.REFUSED]


async def test_a_model_that_rejects_tools_is_asked_without_them_and_it_is_remembered(fake_openai, fake_web):
    """HTTP 400 "does not support tools": the same question is asked without tools, and so are the next ones."""
    conversation = await conversation_with_tools(*BUILTINS)
    fake_openai.rejects_tools = True
    reply = await conversation_reply(conversation=conversation, text="Hello there")
    assert reply.text == "Echo: Hello there" and reply.message.status == MessageStatus.COMPLETE
    refused, answered = fake_openai.chat_requests()
    assert refused.status == 400 and "tools" in refused.body and "tools" not in answered.body
    noted = await ModelToolSupport.objects.aget(model="gpt-4o-mini")
    assert "does not support tools" in noted.error
    await conversation_reply(conversation=conversation, text="Again")
    assert "tools" not in fake_openai.chat_requests()[-1].body and len(fake_openai.chat_requests()) == 3
    assert len(await ledger_of(reply.message.pk)) == 1


# --- Context, ledger and recovery ----------------------------------------------------------------


async def test_later_turns_carry_the_calls_and_results(fake_openai, fake_web, settings):
    """ "Open the second result" works: the next question's request holds the search call and its results."""
    settings.TOOLS_ALLOW_PRIVATE_URLS = True
    conversation = await conversation_with_tools(*BUILTINS)
    fake_openai.enqueue(Behaviour(tool_calls=[search("moon")]), Behaviour(text="Three results."))
    await conversation_reply(conversation=conversation, text="Search the moon")
    fake_openai.enqueue(Behaviour(tool_calls=[read(f"{fake_web.url}/article?n=2")]), Behaviour(text="Read it."))
    await conversation_reply(conversation=conversation, text="Open the second result")
    third = fake_openai.chat_requests()[2].body["messages"]
    roles = [m["role"] for m in third]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "user"]
    assert third[2]["tool_calls"][0]["function"]["name"] == "web_search"
    assert f"{fake_web.url}/article?n=2" in third[3]["content"] and third[4]["content"] == "Three results."


async def test_history_tool_calls_that_do_not_fit_leave_only_the_answer_text(fake_openai, test_tool, settings):
    """A small budget keeps the earlier answer's text but drops its long tool result."""

    async def long_text(arguments, context):
        return ToolResult(text=" ".join(f"word{n}" for n in range(3000)))

    name = await sync_to_async(test_tool)("long_text", long_text)
    conversation = await conversation_with_tools(name)
    fake_openai.enqueue(Behaviour(tool_calls=[{"name": name, "arguments": {}}]), Behaviour(text="A long text."))
    await conversation_reply(conversation=conversation, text="Fetch the long text")
    settings.CONTEXT_TOKEN_BUDGET = 1500
    await conversation_reply(conversation=conversation, text="What was it about?")
    last = fake_openai.chat_requests()[-1].body["messages"]
    assert [m["role"] for m in last] == ["system", "user", "assistant", "user"] and last[2]["content"] == "A long text."


async def test_the_ledger_equals_the_fakes_usage_over_every_round(fake_openai, fake_web, settings):
    """Three answers with one, two and zero tool rounds: the ledger's total is exactly the fake's usage priced."""
    settings.TOOLS_ALLOW_PRIVATE_URLS = True
    conversation = await conversation_with_tools(*BUILTINS)
    fake_openai.enqueue(
        Behaviour(tool_calls=[search("a")], cached_tokens=5), Behaviour(text="one"),
        Behaviour(tool_calls=[search("b")]), Behaviour(tool_calls=[read(f"{fake_web.url}/article")]),
        Behaviour(text="two", cached_tokens=12), Behaviour(text="three"),
    )  # fmt: skip
    for question in ("first", "second", "third"):
        await conversation_reply(conversation=conversation, text=question)
    assert len(fake_openai.chat_requests()) == 6
    assert await ledger_total() == fake_reported_cost(fake_openai)
    rounds = await sync_to_async(lambda: list(UsageRecord.objects.order_by("id").values_list("round", flat=True)))()
    assert rounds == [1, 2, 1, 2, 3, 1]


@sync_to_async
def crashed_after_one_round(conversation, question: str) -> Message:
    """A pending answer whose first round (a search) was billed and run before the process died."""
    turn = turn_accept(conversation=conversation, text=question)
    Message.objects.filter(pk=turn.reply.pk).update(content="Searching first. ")
    usage_record_create(
        user=conversation.user, kind=UsageKind.CHAT, model="gpt-4o-mini", channel=conversation.channel,
        conversation=conversation, message=turn.reply, input_tokens=120, output_tokens=15, round=1,
    )  # fmt: skip
    ToolCall.objects.create(
        message=turn.reply, conversation=conversation, user=conversation.user, round=1, position=0,
        call_id="call_before_crash", tool_name="web_search", arguments='{"query": "before"}',
        status=ToolCallStatus.OK, result="1. Before the crash\n   http://example.com/", token_count=30,
    )  # fmt: skip
    ToolCall.objects.create(
        message=turn.reply, conversation=conversation, user=conversation.user, round=1, position=1,
        call_id="call_running", tool_name="web_search", arguments='{"query": "half"}',
    )  # fmt: skip
    return Message.objects.get(pk=turn.reply.pk)


async def test_a_resumed_answer_bills_and_runs_nothing_twice(fake_openai, fake_web):
    """After a crash, the answer goes on from round 2: round 1 is neither billed nor searched again."""
    conversation = await conversation_with_tools(*BUILTINS)
    pending = await crashed_after_one_round(conversation, "What happened before?")
    fake_openai.enqueue(Behaviour(text="Before the crash, things happened."))
    turn = await sync_to_async(turn_for_pending_reply)(pending)
    reply = await turn_answer(turn)

    assert reply.text == "Searching first. \n\nBefore the crash, things happened."
    [request] = fake_openai.chat_requests()
    messages = request.body["messages"]
    assert messages[-3]["tool_calls"][0]["id"] == "call_before_crash"
    assert messages[-2]["content"].startswith("1. Before the crash") and "restarted" in messages[-1]["content"]
    assert fake_web.queries == []
    records = await ledger_of(pending.pk)
    assert [r.round for r in records] == [1, 2]
    stored = await Message.objects.aget(pk=pending.pk)
    assert stored.input_tokens == 120 + records[1].input_tokens and stored.status == MessageStatus.COMPLETE
    running = await ToolCall.objects.aget(call_id="call_running")
    assert running.status == ToolCallStatus.ERROR and "restarted" in running.error


async def test_stopping_while_a_tool_runs_keeps_the_round_billed_and_ends_the_call(fake_openai, fake_web, settings):
    """Cancelled during a slow page: the round stays billed once, the call ends as stopped, the answer incomplete."""
    settings.TOOLS_ALLOW_PRIVATE_URLS = True
    conversation = await conversation_with_tools(*BUILTINS)
    fake_openai.enqueue(Behaviour(text="Reading. ", tool_calls=[read(f"{fake_web.url}/slow?seconds=30")]))
    started = asyncio.Event()

    async def on_tool(event) -> None:
        if event.state == "running":
            started.set()

    turn = await sync_to_async(turn_accept)(conversation=conversation, text="Read slowly")
    task = asyncio.create_task(turn_answer(turn, on_tool=on_tool))
    await asyncio.wait_for(started.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    stored = await Message.objects.aget(pk=turn.reply.pk)
    assert stored.status == MessageStatus.INCOMPLETE and stored.content == "Reading. "
    [call] = await calls_of(turn.reply.pk)
    assert call.status == ToolCallStatus.ERROR and call.error == "Stopped."
    assert [r.round for r in await ledger_of(turn.reply.pk)] == [1]


# --- The wire format ------------------------------------------------------------------------------


async def test_the_stream_yields_whole_calls_from_fragments(fake_openai):
    """llm.chat_stream assembles ids, names and argument fragments of two calls into two ToolCalls."""
    fake_openai.enqueue(
        Behaviour(tool_calls=[search("a b c", id="call_1"), search("d e f", id="call_2")], args_chunk_chars=2)
    )
    spec = llm.tool_spec(name="web_search", description="Search.", parameters={"type": "object"})
    items = [item async for item in llm.chat_stream(messages=[{"role": "user", "content": "hi"}], model="gpt-4o-mini",
                                                     tools=[spec])]  # fmt: skip
    [calls] = [item for item in items if isinstance(item, llm.ToolCalls)]
    assert calls.calls == (
        llm.ToolCall(id="call_1", name="web_search", arguments='{"query": "a b c"}'),
        llm.ToolCall(id="call_2", name="web_search", arguments='{"query": "d e f"}'),
    )
    assert any(isinstance(item, llm.Usage) for item in items)


def test_tool_errors_are_sentences():
    """ToolError carries the sentence the model and the person see."""
    assert str(ToolError("The search service is down.")) == "The search service is down."


async def test_a_timestamped_answer_keeps_its_question_first(fake_openai, fake_web):
    """The stored rows stay question then answer, whatever the rounds in between."""
    conversation = await conversation_with_tools(*BUILTINS)
    fake_openai.enqueue(Behaviour(tool_calls=[search("x")]), Behaviour(text="y"))
    reply = await conversation_reply(conversation=conversation, text="q")
    rows = await sync_to_async(lambda: list(conversation.messages.order_by("id").values_list("role", "status")))()
    assert rows == [(Role.USER, MessageStatus.COMPLETE), (Role.ASSISTANT, MessageStatus.COMPLETE)]
    assert reply.message.created_at <= timezone.now()


def test_an_mcp_test_server_can_be_started_twice():
    """The MCP test server shuts down cleanly and a second one starts on another port."""
    with McpTestServer() as one, McpTestServer() as two:
        assert one.port != two.port
