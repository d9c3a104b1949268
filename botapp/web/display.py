"""How the chat page shows things: the line under an answer or a picture, pictures, chart axes."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.utils.translation import gettext as _

from botapp import media
from botapp.models import MediaFile, MediaKind, Message
from botapp.usage import format_usd


def answer_meta(*, input_tokens: int, output_tokens: int, cost_usd: Decimal | None) -> str:
    """The small line under an answer: its tokens and what it cost."""
    return _("%(input)s tokens in · %(output)s out · %(cost)s") % {
        "input": input_tokens,
        "output": output_tokens,
        "cost": format_usd(cost_usd),
    }


def picture_meta(cost: Decimal) -> str:
    """The small line under a picture: what it cost."""
    return _("Picture · %(cost)s") % {"cost": format_usd(cost)}


def picture_payload(item: MediaFile) -> dict[str, Any]:
    """How the page shows a picture: where it is, its size, and what it was made from."""
    return {
        "id": item.pk,
        "url": media.media_url(item),
        "width": item.width,
        "height": item.height,
        "caption": item.prompt,
    }


def with_media(message: Message) -> None:
    """Attach an answer's picture and recording (prefetched) for the template."""
    files = list(message.media.all())
    message.pictures = [item for item in files if item.kind == MediaKind.IMAGE]
    message.recording = next((item for item in files if item.kind == MediaKind.SPEECH), None)
    # An /image answer is its picture (its text is the caption); pictures a tool drew go with the answer's text.
    message.is_picture = any(
        item.usage is not None and item.usage.message_id == message.pk for item in message.pictures
    )
    if message.is_picture:
        cost = sum((item.usage.cost_usd for item in message.pictures if item.usage is not None), Decimal("0"))
        message.meta = picture_meta(cost)


def documents_in(message: Any) -> list[dict[str, Any]]:
    """The documents a message carries, as its attachments list them."""
    return [a for a in message.attachments or () if a.get("type") == "document"]


def format_tokens(value: float) -> str:
    """Token counts for a chart axis: 950, 12k, 1.5M."""
    if value >= 1_000_000:
        return f"{value / 1_000_000:.1f}M"
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    return f"{value:g}"
