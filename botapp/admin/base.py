"""What every Jarvis admin page shares: dollars, fast changelists for large tables, read-only rows."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from django.contrib import admin
from django.core.paginator import Paginator
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from botapp.selectors import table_row_estimate
from botapp.usage import format_usd


def money(value: object) -> str:
    return format_usd(value) if value is not None else "-"


def conversation_link(obj: Any, text: object = None, *, fragment: str = "") -> str:
    """A link to the admin page (and transcript) of `obj`'s conversation, reading `text` or the conversation."""
    url = reverse("admin:botapp_conversation_change", args=[obj.conversation_id]) + fragment
    return format_html('<a href="{}">{}</a>', url, obj.conversation if text is None else text)


class ConversationColumn:
    """A `conversation_link` column for rows that belong to a conversation."""

    @admin.display(description=_("conversation"))
    def conversation_link(self, obj: Any) -> str:
        return conversation_link(obj)


# --- Large tables -------------------------------------------------------------------------------


class EstimatedCountPaginator(Paginator):
    """Counts at most CAP rows; past that, an unfiltered table's size is estimated, never scanned.

    A filtered selection larger than CAP shows as CAP + 1 rows: narrow the filter to see the rest.
    """

    CAP = 10_000

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        capped = queryset.order_by().values("pk")[: self.CAP + 1].count()
        if capped <= self.CAP:
            return capped
        if not queryset.query.where:
            estimate = table_row_estimate(queryset.model)
            if estimate is not None and estimate > self.CAP:
                return estimate
        return capped


class LargeTableAdmin(admin.ModelAdmin):
    """A changelist that stays fast on a table of millions of rows: no full COUNT(*) per page."""

    paginator = EstimatedCountPaginator
    show_full_result_count = False
    list_per_page = 50


class ReadOnlyAdmin(LargeTableAdmin):
    """Rows the admin may read and never change: messages and the append-only ledger."""

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
