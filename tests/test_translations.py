"""The Simplified Chinese catalogs: complete, true to their placeholders, compiled, used by the pages and the bot."""

from __future__ import annotations

import ast
import gettext
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse
from django.utils import translation

from botapp.documents.context import Source, sources_line
from botapp.documents.models import Document, DocumentState
from botapp.documents.progress import progress_label
from tests.factories import UserFactory
from tests.telegram_support import TOKEN, Running

pytest_plugins = ["tests.telegram_support"]

CATALOGS = [Path(path) / "zh_Hans" / "LC_MESSAGES" / "django.po" for path in settings.LOCALE_PATHS]


@dataclass
class Entry:
    msgctxt: str = ""
    msgid: str = ""
    msgid_plural: str = ""
    msgstrs: list[str] = field(default_factory=list)
    flags: set[str] = field(default_factory=set)
    line: int = 0

    @property
    def key(self) -> str:
        """The entry's key in a compiled catalog: the context, EOT, then the msgid."""
        return f"{self.msgctxt}\x04{self.msgid}" if self.msgctxt else self.msgid


def parse_po(path: Path) -> list[Entry]:
    """The live entries of a .po file (the header and obsolete `#~` entries left out)."""
    entries: list[Entry] = []
    entry: Entry | None = None
    target: str | None = None
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line:
            entry, target = None, None
            continue
        if entry is None:
            entry = Entry(line=number)
            entries.append(entry)
        if line.startswith("#~"):
            entry.flags.add("obsolete")
        elif line.startswith("#,"):
            entry.flags.update(flag.strip() for flag in line[2:].split(","))
        elif line.startswith("#"):
            continue
        elif line.startswith('"'):
            value = ast.literal_eval(line)
            if target == "msgctxt":
                entry.msgctxt += value
            elif target == "msgid":
                entry.msgid += value
            elif target == "msgid_plural":
                entry.msgid_plural += value
            else:
                entry.msgstrs[-1] += value
        else:
            keyword, _, value = line.partition(" ")
            target = keyword
            if keyword.startswith("msgstr"):
                entry.msgstrs.append(ast.literal_eval(value))
            else:
                setattr(entry, keyword, ast.literal_eval(value))
    return [e for e in entries if e.msgid and "obsolete" not in e.flags]


PRINTF = re.compile(r"%(?:\(\w+\))?[-#0 +]*\d*(?:\.\d+)?[diouxXeEfFgGcrs%]")
# What a translation must carry over unchanged: {name} placeholders, HTML tags, Markdown code and bold,
# Telegram commands, setting names.
VERBATIM = re.compile(
    r"\{\w*\}|</?[a-zA-Z][^>]*>|`[^`]+`|\*\*"
    r"|(?<![A-Za-z0-9_/.:])/[a-z_]+(?![A-Za-z0-9_])"
    r"|(?<![A-Za-z0-9_])[A-Z][A-Z0-9]*_[A-Z0-9_]+(?![A-Za-z0-9_])"
)


def markers(text: str, *, python_format: bool) -> Counter[str]:
    found = Counter(VERBATIM.findall(text))
    if python_format:
        found.update(PRINTF.findall(text))
    return found


@pytest.mark.parametrize("path", CATALOGS, ids=lambda p: str(p.relative_to(settings.BASE_DIR)))
def test_every_entry_is_translated_and_none_is_fuzzy(path: Path):
    """No empty msgstr and no `#, fuzzy` left in either catalog: every English sentence has a checked translation."""
    entries = parse_po(path)
    assert len(entries) > 50, "the catalog looks truncated"
    untranslated = [(e.line, e.msgid) for e in entries if not all(e.msgstrs)]
    fuzzy = [(e.line, e.msgid) for e in entries if "fuzzy" in e.flags]
    assert untranslated == []
    assert fuzzy == []


@pytest.mark.parametrize("path", CATALOGS, ids=lambda p: str(p.relative_to(settings.BASE_DIR)))
def test_translations_keep_every_placeholder_tag_and_command(path: Path):
    """Each translation has the msgid's %(name)s / %d placeholders, {names}, tags, /commands and SETTING_NAMES."""
    mismatched = []
    for entry in parse_po(path):
        python_format = "python-format" in entry.flags
        wanted = markers(entry.msgid_plural or entry.msgid, python_format=python_format)
        for msgstr in entry.msgstrs:
            got = markers(msgstr, python_format=python_format)
            if got != wanted:
                mismatched.append((entry.line, entry.msgid, dict(wanted), dict(got)))
    assert mismatched == []


@pytest.mark.parametrize("path", CATALOGS, ids=lambda p: str(p.relative_to(settings.BASE_DIR)))
def test_compiled_catalog_matches_its_source(path: Path):
    """The committed .mo holds exactly the .po's translations (compilemessages was run after the last edit)."""
    with path.with_suffix(".mo").open("rb") as compiled:
        catalog = gettext.GNUTranslations(compiled)
    stale = []
    for entry in parse_po(path):
        # Chinese has one plural form (nplurals=1): every count reads msgstr[0].
        if entry.msgid_plural and entry.msgctxt:
            got = catalog.npgettext(entry.msgctxt, entry.msgid, entry.msgid_plural, 2)
        elif entry.msgid_plural:
            got = catalog.ngettext(entry.msgid, entry.msgid_plural, 2)
        elif entry.msgctxt:
            got = catalog.pgettext(entry.msgctxt, entry.msgid)
        else:
            got = catalog.gettext(entry.msgid)
        if got != entry.msgstrs[0]:
            stale.append((entry.key, entry.msgstrs[0], got))
    assert stale == []


def test_a_string_in_both_catalogs_is_translated_the_same_way():
    """Django merges the catalogs and the first wins: a shared msgid must not say two different things."""
    core, bot = ({e.key: e.msgstrs for e in parse_po(path)} for path in CATALOGS)
    assert {msgid: (core[msgid], bot[msgid]) for msgid in core.keys() & bot.keys() if core[msgid] != bot[msgid]} == {}


def test_document_progress_and_sources_read_in_chinese():
    """The words the chat, Telegram and the admin show for a document's indexing and an answer's sources."""
    reading = Document(file_name="handbook.pdf", state=DocumentState.READING, progress_done=3, progress_total=12)
    ready = Document(file_name="handbook.pdf", state=DocumentState.READY, pages=12, embedding_model="")
    sources = [Source(label=1, file_name="handbook.pdf", where="p. 2")]
    with translation.override("zh-hans"):
        assert progress_label(reading) == "正在读取第 3 页，共 12 页"
        assert progress_label(ready) == "就绪：12 页, 仅按关键词检索"
        assert sources_line(sources) == "来源：[1] handbook.pdf, p. 2"
    with translation.override("en"):
        assert progress_label(reading) == "reading page 3 of 12"


@pytest.mark.django_db
def test_chat_page_attach_button_follows_the_browsers_language(conversation):
    """A zh-CN browser gets the document button and its messages in Chinese, with the %(name)s the script fills."""
    client = Client()
    client.force_login(conversation.user)
    url = reverse("web:conversation", args=[conversation.pk])
    page = client.get(url, HTTP_ACCEPT_LANGUAGE="zh-CN,zh;q=0.9").content.decode()
    assert "附加文档（PDF、Word、文本…），或拖放到这里" in page
    assert 'data-msg-drop="把文件拖放到这里即可附加"' in page
    assert "“%(name)s”太大了：Jarvis 最多接受" in page
    english = client.get(url, HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "Attach a document (PDF, Word, text…) or drop it here" in english


@pytest.mark.django_db
def test_admin_names_tools_and_documents_in_chinese():
    """The admin index lists the second wave's models under their Chinese names for a zh-Hans admin."""
    client = Client()
    client.force_login(UserFactory(username="boss", is_staff=True, is_superuser=True))
    page = client.get(reverse("admin:index"), HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    for name in ("知识库", "MCP 服务器", "工具调用", "不支持工具的模型"):
        assert name in page, name


@pytest.mark.django_db(transaction=True)
async def test_telegram_replies_in_chinese_for_a_chinese_client(jarvis: Running):
    """A zh-Hans Telegram user gets /help, the unsupported-message sentence and a refused file in Chinese."""
    jarvis.telegram.push_text(TOKEN, 931, "/help", language_code="zh-hans")
    [help_text] = await jarvis.answered(931)
    assert "回答会注明出自哪几页" in help_text.text
    jarvis.telegram.push_sticker(TOKEN, 932, language_code="zh-hans")
    [sticker] = await jarvis.answered(932)
    assert sticker.text == "Jarvis 无法处理这类消息。请发送文字、语音消息、音频文件、视频留言、图片或文档。"
    jarvis.telegram.push_document(TOKEN, 933, b"x", file_name="huge.pdf", file_size=25 * 1024 * 1024,
                                  language_code="zh-hans")  # fmt: skip
    [refused] = await jarvis.answered(933)
    assert "“huge.pdf”有" in refused.text and "Telegram 只允许机器人下载不超过 20 MB 的文件" in refused.text
    assert jarvis.openai.served == []
