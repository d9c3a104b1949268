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
from collections.abc import Callable
from dataclasses import dataclass

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Q, QuerySet
from django.db.models.expressions import RawSQL
from django.db.models.signals import pre_delete
from django.dispatch import receiver
from django.http import HttpRequest
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from botapp import fulltext, selectors
from botapp.models import Conversation, Message, MessageStatus

MESSAGES = fulltext.FullTextIndex("botapp_message_fts")
# At most this many conversations are listed for a person's search.
RESULTS = 50
# Characters of a message shown around the first word found in it.
SNIPPET_BEFORE = 40
SNIPPET_LENGTH = 160

SearchResults = tuple[QuerySet, bool]


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


def _ids_holding(text: str, *, column: str = "id", user: AbstractBaseUser | None = None) -> RawSQL | None:
    """A subquery of the messages (`id`) or conversations (`grp`) holding every word of `text`."""
    matching = fulltext.matching_sql(MESSAGES, text)
    if matching is None:
        return None
    sql, params = matching
    if user is not None:
        # Filtering on the group inside the index keeps the match to the person's conversations on both databases.
        sql += f" AND grp IN (SELECT id FROM {Conversation._meta.db_table} WHERE user_id = %s)"  # noqa: S608
        params = [*params, user.pk]
    # Only identifiers are formatted into the SQL; the words are parameters.
    return RawSQL(f"SELECT {column} FROM ({sql}) AS matched", params)  # noqa: S608, S611


def messages_holding(text: str) -> Q | None:
    """Messages that say every word of `text` (None: `text` has no words to look for)."""
    ids = _ids_holding(text)
    return None if ids is None else Q(pk__in=ids)


def conversations_holding(text: str) -> Q | None:
    """Conversations with a message that says every word of `text` (None: `text` has no words)."""
    ids = _ids_holding(text, column="grp")
    return None if ids is None else Q(pk__in=ids)


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
    ids = _ids_holding(query, user=user)
    if ids is None:
        return []
    found = _found(Message.objects.filter(pk__in=ids), user=user, query=query, limit=limit)
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


def admin_search_results(
    default: Callable[[HttpRequest, QuerySet, str], SearchResults],
    request: HttpRequest,
    queryset: QuerySet,
    search_term: str,
    *,
    holding: Callable[[str], Q | None],
    words_or_fields: bool,
) -> SearchResults:
    """The admin's search: `=ID` terms and the cheap `search_fields` Django's way, the words through the index.

    `holding` gives the rows whose messages say the words. `words_or_fields`: a row is found when the words are
    in its messages or when Django's search on its own fields finds it (a conversation's title or person);
    otherwise the `=` terms narrow what the words find (a conversation's messages).
    """
    exact = " ".join(term for term in search_term.split() if term.startswith("="))
    words = " ".join(term for term in search_term.split() if not term.startswith("="))
    words_found = holding(words) if words else None
    if words_or_fields:
        results, duplicates = default(request, queryset, search_term)
        if words_found is None or exact:
            return results, duplicates
        return queryset.filter(Q(pk__in=results.order_by().values("pk")) | words_found), duplicates
    results, duplicates = default(request, queryset, " ".join(term[1:] for term in exact.split()))
    if words_found is not None:
        results = results.filter(words_found)
    elif words:
        results = results.none()
    return results, duplicates
