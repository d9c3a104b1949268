"""Finding words in chat messages: the messages' full-text index, a person's own search, the admin's search boxes.

The index (`MESSAGES`, a `botapp.fulltext` side table keyed by message id, grouped by conversation) is written
where an answer is stored, question and answer in one statement (`messages_index`, called by the funnel), and
left by messages as they are deleted: a conversation's through the `pre_delete` signal below, whatever deletes
it (the page, the admin, the retention job, a person's account going); single messages by the retention job
(`messages_forget`). Migration 0013 indexed the messages stored before.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection
from django.db.models import BooleanField, Q, QuerySet
from django.db.models.expressions import RawSQL
from django.db.models.signals import pre_delete
from django.dispatch import receiver
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe
from django.utils.text import smart_split, unescape_string_literal

from botapp import fulltext, selectors
from botapp.models import Conversation, Message, MessageStatus

MESSAGES = fulltext.FullTextIndex("botapp_message_fts")
# At most this many conversations are listed for a person's search.
RESULTS = 50
# Characters of a message shown around the first word found in it.
SNIPPET_BEFORE = 40
SNIPPET_LENGTH = 160
# The admin's search boxes look through at most this many of the newest messages that say the words: as
# many as a changelist counts (EstimatedCountPaginator.CAP + 1), far more than anyone pages through. A word
# said in every tenth message is then read in ten thousand rows of the index, not in a hundred thousand.
ADMIN_MATCHES = 10_001
# The conversations' search box reads fewer (each read costs a lookup of the message's conversation): the
# conversations of the newest 2,000 messages that say the words, some forty pages of them.
ADMIN_CONVERSATION_MATCHES = 2000
# Found in at most this many conversations, a search lists them by id (found in more, the list is walked in
# its order, and the first page fills quickly).
ADMIN_FEW = 1000

# --- Writing ------------------------------------------------------------------------------------


def messages_index(*messages: Message) -> None:
    """Index what the messages say (one statement); a message indexed before is replaced, an empty one skipped."""
    fulltext.index_add(MESSAGES, [(m.pk, m.conversation_id, m.content) for m in messages if m.content.strip()])


def messages_forget(*, within: QuerySet[Message]) -> None:
    """Take the messages of `within` out of the index (before deleting them or blanking what they say)."""
    fulltext.index_remove(MESSAGES, within=within)


@receiver(pre_delete, sender=Conversation, dispatch_uid="jarvis-forget-conversation-words")
def _forget_conversation(sender: type[Conversation], instance: Conversation, **kwargs: object) -> None:
    """A deleted conversation's messages leave the index (the message rows themselves cascade)."""
    messages_forget(within=Message.objects.filter(conversation_id=instance.pk))


# --- Matching -----------------------------------------------------------------------------------


def _saying(text: str) -> RawSQL | None:
    """A condition on messages: the message says every word of `text`.

    The unary plus keeps SQLite from starting at the index's matches (looking each message up by id): it
    starts from the person's conversations instead, and checks their messages against the matches, read once.
    """
    matching = fulltext.matching_sql(MESSAGES, text)
    if matching is None:
        return None
    sql, params = matching
    column = f'+"{Message._meta.db_table}"."id"'
    # Only identifiers are formatted into the SQL; the words are parameters.
    return RawSQL(f"{column} IN (SELECT id FROM ({sql}) AS matched)", params, output_field=BooleanField())  # noqa: S608, S611


# --- A person's own search ----------------------------------------------------------------------


@dataclass(frozen=True)
class Found:
    """A conversation of the person's that says what they looked for, and where it says it."""

    conversation: Conversation
    message: Message
    snippet: SafeString


def conversations_matching(*, user: AbstractBaseUser, query: str, limit: int = RESULTS) -> list[Found]:
    """The person's own conversations that say `query`, newest first, each with a snippet of its matching message.

    Messages holding every word come first; when none does, the messages that best match some of the words.
    A message replaced by a retry or an edit is not on the page any more, so it is not found either.
    """
    saying = _saying(query)
    if saying is None:
        return []
    found = _found(Message.objects.filter(saying), user=user, query=query, limit=limit)
    if found:
        return found
    groups = list(Conversation.objects.filter(user=user).values_list("pk", flat=True))
    ranked = [row_id for row_id, _score in fulltext.search(MESSAGES, query, groups=groups, limit=limit * 4)]
    return _found(Message.objects.filter(pk__in=ranked), user=user, query=query, limit=limit)


def _found(messages: QuerySet[Message], *, user: AbstractBaseUser, query: str, limit: int) -> list[Found]:
    rows = (
        messages.filter(conversation__user=user)
        .exclude(status=MessageStatus.SUPERSEDED)
        .order_by("-conversation__updated_at", "-conversation_id", "-id")
    )
    first: dict[int, Message] = {}
    for message in rows.iterator(chunk_size=200):
        first.setdefault(message.conversation_id, message)
        if len(first) >= limit:
            break
    # The conversations as the list beside the page shows them (named by their first question when untitled).
    listed = selectors.conversation_list(user=user).in_bulk(list(first))
    return [Found(listed[pk], message, snippet(message.content, query)) for pk, message in first.items()]


_WORD = re.compile(rf"([{fulltext._CJK}]+)|([^\W_{fulltext._CJK}]+)")


def _needles(query: str) -> list[str]:
    """What to look for in a message's own text: the words as typed, then their stems, bigrams, characters."""
    needles: list[str] = []
    later: list[str] = []
    for cjk, word in _WORD.findall(unicodedata.normalize("NFKC", query)):
        if word:
            needles.append(word)
            stem = fulltext.analyse(word)
            if stem and stem != word.casefold():
                later.append(stem)
        else:
            needles.append(cjk)
            later += [cjk[i : i + 2] for i in range(len(cjk) - 1)] + list(cjk)
    return list(dict.fromkeys(needle for needle in needles + later if needle))


def snippet(text: str, query: str) -> SafeString:
    """A piece of `text` around the first word of `query` found in it, the words found marked (<mark>), escaped."""
    text = " ".join(text.split())
    needles = _needles(query)
    pattern = re.compile("|".join(re.escape(n) for n in needles), re.IGNORECASE) if needles else None
    first = pattern.search(text) if pattern else None
    start = max(first.start() - SNIPPET_BEFORE, 0) if first else 0
    if start:
        # Start at a word boundary, not mid-word.
        space = text.find(" ", start, first.start())
        start = space + 1 if space != -1 else start
    end = min(start + SNIPPET_LENGTH, len(text))
    piece = text[start:end]
    parts: list[str] = ["…" if start else ""]
    position = 0
    for match in pattern.finditer(piece) if pattern else ():
        parts += [escape(piece[position : match.start()]), f"<mark>{escape(match.group())}</mark>"]
        position = match.end()
    parts += [escape(piece[position:]), "…" if end < len(text) else ""]
    return mark_safe("".join(parts))  # noqa: S308  (every piece of text above is escaped)


# --- The admin's search boxes -------------------------------------------------------------------


def conversations_admin_search(queryset: QuerySet[Conversation], search_term: str) -> QuerySet[Conversation]:
    """Conversations whose title or person's (Telegram) username holds each term, or whose messages say the words.

    The titles and people are read as Django's search would; the words are looked up in the index, among the
    ADMIN_CONVERSATION_MATCHES newest messages that say them, instead of scanning every message.
    """
    terms = _terms(search_term)
    if not terms:
        return queryset
    people = get_user_model().objects
    fields = Q()
    for term in terms:
        named = people.filter(Q(username__icontains=term) | Q(telegram__username__icontains=term)).values("pk")
        fields &= Q(title__icontains=term) | Q(user__in=named)
    outer = f'"{Conversation._meta.db_table}"."id"'
    holding = _newest(" ".join(terms), outer=outer, column="grp", newest=ADMIN_CONVERSATION_MATCHES)
    condition = fields if holding is None else fields | holding
    few = list(queryset.order_by().filter(condition).values_list("pk", flat=True)[: ADMIN_FEW + 1])
    if len(few) <= ADMIN_FEW:
        # A rare word: the page lists the few conversations found, rather than walk every conversation in
        # the list's order looking for them.
        return queryset.filter(pk__in=few)
    return queryset.filter(condition)


def messages_admin_search(queryset: QuerySet[Message], search_term: str) -> QuerySet[Message]:
    """Messages that say the words (among the ADMIN_MATCHES newest that do); `=ID` keeps a conversation's messages."""
    terms = _terms(search_term)
    conversations = [term[1:] for term in terms if term.startswith("=")]
    words = " ".join(term for term in terms if not term.startswith("="))
    for conversation_id in conversations:
        if not conversation_id.isdigit():
            return queryset.none()
        queryset = queryset.filter(conversation_id=int(conversation_id))
    if words:
        # Within a conversation every match is kept: it has few messages to look through.
        outer = f'"{Message._meta.db_table}"."id"'
        holding = _saying(words) if conversations else _newest(words, outer=outer, column="id", newest=ADMIN_MATCHES)
        queryset = queryset.none() if holding is None else queryset.filter(holding)
    return queryset


def _newest(text: str, *, outer: str, column: str, newest: int) -> RawSQL | None:
    """A condition: the `outer` column is the id (`id`) or conversation (`grp`) of one of the `newest` messages
    that say every word of `text`.

    On PostgreSQL they are read once and given to the list's queries as one array: as a subquery, each query
    (the probe, the count, the page) would read them again, and the planner would join them to every message
    of the table. SQLite reads them from the index quickly enough, newest first, in each query.
    """
    matching = fulltext.matching_sql(MESSAGES, text, newest=newest)
    if matching is None:
        return None
    sql, params = matching
    if connection.vendor != "postgresql":
        # Only identifiers are formatted into the SQL; the words are parameters.
        return RawSQL(f"{outer} IN (SELECT {column} FROM ({sql}) AS matched)", params, BooleanField())  # noqa: S608, S611
    position = 0 if column == "id" else 1
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        ids = list(dict.fromkeys(row[position] for row in cursor.fetchall()))
    return RawSQL(f"{outer} = ANY(%s::bigint[])", [ids], BooleanField())  # noqa: S611


def _terms(search_term: str) -> list[str]:
    """The terms of a search box, split as Django's admin splits them ("quoted phrases" kept together)."""
    terms = []
    for term in smart_split(search_term):
        if term[:1] in ('"', "'") and term[0] == term[-1] and len(term) > 1:
            term = unescape_string_literal(term)
        if term.strip():
            terms.append(term)
    return terms
