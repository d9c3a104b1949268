"""The picture tool: the model may decide to draw, through the same picture service as /image (botapp.media)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.utils.translation import gettext as _

from botapp import media
from botapp.models import Conversation, MediaFile, MediaKind, Message, ToolCallStatus
from botapp.tools.registry import BuiltinTool, ToolContext, ToolError, ToolResult, register

DRAW_PICTURE = "draw_picture"


async def draw_picture(arguments: dict[str, Any], context: ToolContext) -> ToolResult:
    prompt = arguments.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ToolError(_("Say what to draw: the argument “prompt” is missing or empty."))
    conversation = await Conversation.objects.select_related("persona").aget(pk=context.conversation_id)
    requested_by = await get_user_model().objects.aget(pk=context.user_id)
    answer = await Message.objects.aget(pk=context.message_id)
    try:
        made = await media.image_generate(
            conversation=conversation, prompt=prompt.strip(), requested_by=requested_by, message=answer
        )
    except media.MediaError as error:
        raise ToolError(_("No picture was made: %(reason)s") % {"reason": error}) from error
    size = f"{made.media.width}x{made.media.height}" if made.media.width else ""
    return ToolResult(
        text=_("The picture %(size)s was drawn and is shown to the person with your answer; do not describe it as a "
               "link.") % {"size": size}
    )  # fmt: skip


def draw_picture_label(arguments: dict[str, Any], done: bool) -> str:
    prompt = str(arguments.get("prompt") or "").strip()[:80]
    return (_("Drew a picture: %(prompt)s") if done else _("Drawing a picture: %(prompt)s…")) % {"prompt": prompt}


def answer_pictures(message_id: int) -> list[MediaFile]:
    """The pictures the picture tool drew for an answer, in the order they were drawn."""
    return list(MediaFile.objects.filter(message_id=message_id, kind=MediaKind.IMAGE).order_by("id"))


def drew_pictures(tool_calls: list[Any]) -> bool:
    """Whether an answer's tool calls include a picture (so its pictures are worth reading)."""
    return any(call.tool_name == DRAW_PICTURE and call.status == ToolCallStatus.OK for call in tool_calls)


register(
    BuiltinTool(
        name=DRAW_PICTURE,
        title="Draw a picture",
        description=(
            "Draw a picture (image generation) when the person asks for one or it clearly helps. Give a detailed "
            "description: subject, style, colours, composition. The picture is shown to the person with your answer."
        ),
        parameters={
            "type": "object",
            "properties": {
                "prompt": {"type": "string", "description": "What to draw: subject, style, colours, composition."}
            },
            "required": ["prompt"],
            "additionalProperties": False,
        },
        run=draw_picture,
        label=draw_picture_label,
    )
)
