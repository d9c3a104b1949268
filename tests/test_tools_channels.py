"""Tools as people and admins see them: the Telegram status line, the page's events and steps, the admin, set-up."""

import json
import re
from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.core.management import call_command
from django.test import AsyncClient
from django.urls import reverse

from botapp.conversations import conversation_reply
from botapp.models import McpServer, Persona, Profile, Tool, ToolCall, ToolCallStatus, UsageRecord
from botapp.tools.services import tools_setup
from tests.factories import ConversationFactory, UserFactory
from tests.fakes.openai_server import Behaviour
from tests.fakes.tool_servers import ARTICLE_TITLE
from tests.telegram_support import TOKEN, Running
from tests.tools_helpers import BUILTINS, fake_reported_cost, mcp_server_add, persona_with_tools

pytest_plugins = ["tests.telegram_support", "tests.tools_support"]
pytestmark = pytest.mark.django_db(transaction=True)


# --- Telegram -------------------------------------------------------------------------------------


async def test_telegram_shows_a_status_line_while_a_tool_runs_then_the_answer(jarvis: Running, fake_web, settings):
    """ "Reading 127.0.0.1…" shows while the slow page is read; the answer replaces it and links its source."""
    settings.TOOLS_ALLOW_PRIVATE_URLS = True
    await sync_to_async(persona_with_tools)(*BUILTINS)
    page = f"{fake_web.url}/slow?seconds=3"
    jarvis.openai.enqueue(
        Behaviour(tool_calls=[{"name": "read_web_page", "arguments": {"url": page}}]),
        Behaviour(text="The page says it was slow."),
    )
    jarvis.telegram.push_text(TOKEN, 701, "Read that slow page")
    [answer] = await jarvis.answered(701, timeout=30)
    assert answer.text.startswith("The page says it was slow.")
    assert "Sources: Slow" in answer.text and "⏳" not in answer.text
    assert any(entity["type"] == "text_link" and entity["url"] == page for entity in answer.entities)
    assert "⏳ Reading 127.0.0.1…" in answer.history[0] and "<i>" in answer.history[0]
    assert answer.edits >= 1, "the status line is replaced by the answer, in the same message"


async def test_telegram_answers_with_tools_on_the_ledger(jarvis: Running, fake_web):
    """A search in Telegram: one message, and a ledger row per model call equal to the fake's usage."""
    await sync_to_async(persona_with_tools)(*BUILTINS)
    jarvis.openai.enqueue(
        Behaviour(tool_calls=[{"name": "web_search", "arguments": {"query": "jarvis"}}]), Behaviour(text="Found it.")
    )
    jarvis.telegram.push_text(TOKEN, 702, "Search jarvis")
    [answer] = await jarvis.answered(702, timeout=30)
    assert answer.text == "Found it."
    records = await sync_to_async(list)(UsageRecord.objects.order_by("round"))
    assert [r.round for r in records] == [1, 2]
    assert sum(r.cost_usd for r in records) == fake_reported_cost(jarvis.openai)


# --- The web page (events and reload) -------------------------------------------------------------


async def send(client: AsyncClient, conversation, text: str) -> list[dict]:
    response = await client.post(reverse("web:send", args=[conversation.pk]), {"text": text, "tz": "Asia/Tokyo"})
    assert response.streaming
    body = b"".join([chunk async for chunk in response.streaming_content])
    return [json.loads(line) for line in body.decode().splitlines()]


async def test_the_page_gets_a_tool_event_per_call_start_and_end(fake_openai, fake_web, settings):
    """The ndjson stream carries running and done events for each call, then done with the sources used."""
    settings.TOOLS_ALLOW_PRIVATE_URLS = True
    await sync_to_async(persona_with_tools)(*BUILTINS)
    conversation = await sync_to_async(ConversationFactory)()
    client = AsyncClient()
    await client.aforce_login(conversation.user)
    article = f"{fake_web.url}/article"
    fake_openai.enqueue(
        Behaviour(tool_calls=[{"name": "read_web_page", "arguments": {"url": article}},
                              {"name": "current_datetime", "arguments": {}}]),
        Behaviour(text="Read."),
    )  # fmt: skip
    events = await send(client, conversation, "Read the article")
    tools = [e for e in events if e["type"] == "tool"]
    assert sorted((e["state"], e["label"]) for e in tools) == [
        ("done", "Checked the date and time"), ("done", "Read 127.0.0.1"),
        ("running", "Checking the date and time…"), ("running", "Reading 127.0.0.1…"),
    ]  # fmt: skip
    read = next(e for e in tools if e["state"] == "done" and e["label"] == "Read 127.0.0.1")
    assert read["status"] == "ok" and read["sources"] == [{"url": article, "title": ARTICLE_TITLE}]
    done = events[-1]
    assert done["type"] == "done" and done["sources"] == [{"url": article, "title": ARTICLE_TITLE}]
    assert Decimal(done["cost_usd"]) == fake_reported_cost(fake_openai)
    clock = await ToolCall.objects.aget(tool_name="current_datetime")
    assert "Asia/Tokyo" in clock.result, "the browser's time zone is the person's"
    assert (await Profile.objects.aget(user=conversation.user)).time_zone == "Asia/Tokyo"

    page = await client.get(reverse("web:conversation", args=[conversation.pk]))
    html = page.content.decode()
    assert html.count('class="tool-step status-ok"') == 2 and "Read 127.0.0.1" in html
    assert re.search(rf'<p class="sources">Sources: <a href="{re.escape(article)}" rel="noopener', html)


# --- Admin ----------------------------------------------------------------------------------------


@pytest.fixture
def staff_client(client, db):
    admin_user = UserFactory(username="root", is_staff=True, is_superuser=True)
    client.force_login(admin_user)
    return client


def test_the_admin_lists_tool_calls_with_filters_and_transcripts_show_them(staff_client, fake_openai, fake_web):
    """Tool calls are listed and filtered by tool, person and status; the transcript shows each call."""
    persona_with_tools(*BUILTINS)
    conversation = ConversationFactory(user=UserFactory(username="ada"))
    fake_openai.enqueue(
        Behaviour(tool_calls=[{"name": "web_search", "arguments": {"query": "admin filters"}},
                              {"name": "read_web_page", "arguments": {"url": "http://127.0.0.1/x"}}]),
        Behaviour(text="Done."),
    )  # fmt: skip
    async_to_sync(conversation_reply)(conversation=conversation, text="Search and read")
    listing = staff_client.get(reverse("admin:botapp_toolcall_changelist"))
    assert listing.status_code == 200 and "admin filters" in listing.content.decode()
    search_tool = Tool.objects.get(name="web_search")
    by_tool = staff_client.get(reverse("admin:botapp_toolcall_changelist") + f"?tool__id__exact={search_tool.pk}")
    assert "admin filters" in by_tool.content.decode() and "127.0.0.1/x" not in by_tool.content.decode()
    failed = staff_client.get(reverse("admin:botapp_toolcall_changelist") + "?status__exact=error")
    assert "127.0.0.1/x" in failed.content.decode() and "admin filters" not in failed.content.decode()
    person = staff_client.get(reverse("admin:botapp_toolcall_changelist") + f"?user={conversation.user_id}")
    assert person.status_code == 200 and "ada" in person.content.decode()
    call = ToolCall.objects.get(tool_name="web_search")
    detail = staff_client.get(reverse("admin:botapp_toolcall_change", args=[call.pk]))
    assert detail.status_code == 200 and "Result 1 for admin filters" in detail.content.decode()
    transcript = staff_client.get(reverse("admin:botapp_conversation_change", args=[conversation.pk]))
    body = transcript.content.decode()
    assert f'id="tool-call-{call.pk}"' in body and "Tool read_web_page · Failed" in body


def test_the_admin_switches_a_tool_off_everywhere(staff_client):
    """The action turns a tool off for every persona; the personas keep it enabled for later."""
    persona_with_tools(*BUILTINS)
    tool = Tool.objects.get(name="web_search")
    response = staff_client.post(
        reverse("admin:botapp_tool_changelist"), {"action": "switch_off", "_selected_action": [tool.pk]}, follow=True
    )
    assert "1 tool switched off." in response.content.decode()
    tool.refresh_from_db()
    assert not tool.enabled and Persona.objects.get(name="Jarvis").tools.filter(pk=tool.pk).exists()


def test_an_admin_adds_an_mcp_server_its_header_encrypted_and_its_tools_listed(staff_client, mcp_server):
    """Saving the server lists its tools through the SDK; the header is stored encrypted and shown masked."""
    response = staff_client.post(
        reverse("admin:botapp_mcpserver_add"),
        {"name": "weather", "url": mcp_server.url, "enabled": "on", "auth_header_name": "Authorization",
         "new_auth_header_value": "Bearer weather-secret", "tools-TOTAL_FORMS": "0", "tools-INITIAL_FORMS": "0"},
        follow=True,
    )  # fmt: skip
    assert response.status_code == 200
    assert "eather lists 4 tool(s); 4 new." in response.content.decode()
    server = McpServer.objects.get(name="weather")
    assert "weather-secret" not in server.auth_header_encrypted and server.auth_header_value == "Bearer weather-secret"
    page = staff_client.get(reverse("admin:botapp_mcpserver_change", args=[server.pk])).content.decode()
    assert "weather-secret" not in page and server.auth_header_hint in page and "weather__forecast" in page
    persona_page = staff_client.get(
        reverse("admin:botapp_persona_change", args=[Persona.objects.get(name="Jarvis").pk])
    )
    assert "weather__forecast" in persona_page.content.decode()


# --- Set-up -------------------------------------------------------------------------------------


def test_setup_enables_web_search_and_mcp_tools_for_the_default_persona_once(settings, fake_web, mcp_server):
    """SEARXNG_URL and MCP_SERVERS give the default persona their tools; what an admin removes later stays off."""
    settings.SEARXNG_URL = fake_web.url
    settings.MCP_SERVERS = f"weather={mcp_server.url}"
    McpServer.objects.create(name="weather", url=mcp_server.url, auth_header_name="Authorization")
    server = McpServer.objects.get(name="weather")
    server.auth_header_value = "Bearer weather-secret"
    server.save()
    report = tools_setup()
    jarvis = Persona.objects.get(name="Jarvis")
    names = set(jarvis.tools.values_list("name", flat=True))
    assert {"web_search", "read_web_page", "weather__forecast"} <= names and "current_datetime" not in names
    assert any("MCP server weather: 4 tool(s)" in line for line in report.done) and not report.problems
    jarvis.tools.remove(Tool.objects.get(name="web_search"))
    tools_setup()
    assert not jarvis.tools.filter(name="web_search").exists()


def test_setup_says_what_is_wrong_with_mcp_servers(settings, capsys):
    """An entry that is not name=url, and a server that is down, are warnings; set-up goes on."""
    settings.MCP_SERVERS = "broken-entry"
    assert "not name=url" in tools_setup().problems[0]
    settings.MCP_SERVERS = "down=http://127.0.0.1:9/mcp"
    [problem] = tools_setup().problems
    assert "MCP server down" in problem and "cannot be reached" in problem
    call_command("jarvis_setup", "--skip-static")
    assert "MCP server down" in capsys.readouterr().out


def test_other_admin_pages_render(staff_client, mcp_server):
    """The tool, MCP server and model-without-tools lists render for a staff user."""
    mcp_server_add(mcp_server)
    for name in ("botapp_tool_changelist", "botapp_mcpserver_changelist", "botapp_modeltoolsupport_changelist"):
        assert staff_client.get(reverse(f"admin:{name}")).status_code == 200
    assert ToolCallStatus.OK == "ok"
