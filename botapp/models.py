"""The data of Jarvis: people, bots, personas, conversations, messages, prices and the usage ledger."""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from decimal import Decimal
from pathlib import PurePosixPath

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from botapp import crypto
from botapp.redaction import stored_text_redact

# Costs keep 12 decimal places: a token count times a 6-decimal price per million is exact.
USD = {"max_digits": 24, "decimal_places": 12}
UNIT_PRICE = {"max_digits": 14, "decimal_places": 6}


class Channel(models.TextChoices):
    TELEGRAM = "telegram", _("Telegram")
    WEB = "web", _("Web")
    SYSTEM = "system", _("System")


class Profile(models.Model):
    """What Jarvis keeps about a person beyond Django's `User`: access and budgets."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="jarvis_profile")
    is_blocked = models.BooleanField(_("blocked"), default=False, help_text=_("A blocked person gets no answers."))
    daily_budget_usd = models.DecimalField(
        _("daily budget (USD)"),
        max_digits=12,
        decimal_places=4,
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal("0"))],
        help_text=_("Empty: the default (DEFAULT_DAILY_BUDGET_USD)."),
    )
    monthly_budget_usd = models.DecimalField(
        _("monthly budget (USD)"),
        max_digits=12,
        decimal_places=4,
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal("0"))],
        help_text=_("Empty: the default (DEFAULT_MONTHLY_BUDGET_USD)."),
    )
    unlimited_budget = models.BooleanField(
        _("unlimited budget"), default=False, help_text=_("Ignore every budget for this person.")
    )
    language_code = models.CharField(_("language"), max_length=16, blank=True)
    time_zone = models.CharField(
        _("time zone"),
        max_length=64,
        blank=True,
        help_text=_("IANA name such as Europe/Paris; the web page sets it from the browser. Empty: TIME_ZONE."),
    )

    class Meta:
        verbose_name = _("profile")
        verbose_name_plural = _("profiles")

    def __str__(self) -> str:
        return f"Profile of {self.user}"


class TelegramIdentity(models.Model):
    """A Telegram account, created on first contact and linked to a `User`."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="telegram")
    telegram_id = models.BigIntegerField(_("Telegram user id"), unique=True)
    username = models.CharField(_("username"), max_length=64, blank=True, db_index=True)
    first_name = models.CharField(_("first name"), max_length=128, blank=True)
    last_name = models.CharField(_("last name"), max_length=128, blank=True)
    language_code = models.CharField(_("language code"), max_length=16, blank=True)
    created_at = models.DateTimeField(_("first seen"), auto_now_add=True)
    updated_at = models.DateTimeField(_("last seen"), auto_now=True)

    class Meta:
        verbose_name = _("Telegram identity")
        verbose_name_plural = _("Telegram identities")
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"@{self.username}" if self.username else f"tg:{self.telegram_id}"


class Persona(models.Model):
    """How Jarvis behaves: a system prompt and the model settings that go with it."""

    name = models.CharField(_("name"), max_length=64, unique=True)
    description = models.CharField(_("description"), max_length=200, blank=True)
    system_prompt = models.TextField(_("system prompt"))
    model = models.CharField(
        _("model"),
        max_length=100,
        blank=True,
        help_text=_("Empty: OPENAI_MODEL. Otherwise it must have a row in Model prices."),
    )
    temperature = models.DecimalField(
        _("temperature"),
        max_digits=3,
        decimal_places=2,
        default=Decimal("0.7"),
        validators=[MinValueValidator(Decimal("0")), MaxValueValidator(Decimal("2"))],
    )
    max_output_tokens = models.PositiveIntegerField(
        _("max output tokens"), default=1024, validators=[MinValueValidator(1), MaxValueValidator(128000)]
    )
    is_active = models.BooleanField(_("offered to users"), default=True)
    image_size = models.CharField(
        _("picture size"),
        max_length=32,
        blank=True,
        default="1024x1024",
        help_text=_(
            "WIDTHxHEIGHT as the image model accepts it (gpt-image-1: 1024x1024, 1536x1024, 1024x1536 or auto; "
            "dall-e-3: 1024x1024, 1792x1024 or 1024x1792). Empty: the model's default."
        ),
    )
    image_quality = models.CharField(
        _("picture quality"),
        max_length=16,
        blank=True,
        help_text=_("gpt-image-1: low, medium, high or auto; dall-e-3: standard or hd. Empty: the model's default."),
    )
    voice = models.CharField(
        _("voice"),
        max_length=64,
        blank=True,
        default="alloy",
        help_text=_(
            "The speech model's voice: alloy, ash, ballad, coral, echo, fable, nova, onyx, sage, shimmer, ... "
            "Empty: alloy."
        ),
    )
    speaks_by_default = models.BooleanField(
        _("answers with voice notes"),
        default=False,
        help_text=_("Telegram answers come as voice notes (with their text); each chat can switch with /voice."),
    )
    tools = models.ManyToManyField(
        "Tool",
        verbose_name=_("tools"),
        blank=True,
        related_name="personas",
        help_text=_("What Jarvis may use when answering as this persona (web search, MCP tools, ...)."),
    )
    is_default = models.BooleanField(
        _("default"),
        default=False,
        help_text=_("New conversations start with this persona unless their bot has a default persona of its own."),
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = _("persona")
        verbose_name_plural = _("personas")
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["is_default"], condition=Q(is_default=True), name="one_default_persona")
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if self.model and not ModelPrice.objects.filter(model=self.model).exists():
            raise ValidationError(
                {"model": _("Unknown model “%(model)s”: add it under Model prices first.") % {"model": self.model}}
            )


class AccessPolicy(models.TextChoices):
    OPEN = "open", _("Open to everyone")
    ALLOWLIST = "allowlist", _("Only the allowlist")


class Bot(models.Model):
    """A Telegram bot that Jarvis runs; the token is encrypted at rest."""

    name = models.CharField(_("name"), max_length=64, unique=True)
    token_encrypted = models.TextField(_("token (encrypted)"), editable=False)
    token_hint = models.CharField(_("token"), max_length=20, editable=False, help_text=_("Masked."))
    telegram_username = models.CharField(_("Telegram username"), max_length=64, blank=True)
    enabled = models.BooleanField(_("enabled"), default=True)
    default_persona = models.ForeignKey(
        Persona, verbose_name=_("default persona"), on_delete=models.PROTECT, null=True, blank=True
    )
    access_policy = models.CharField(
        _("access policy"), max_length=16, choices=AccessPolicy.choices, default=AccessPolicy.OPEN
    )
    allowed_users = models.TextField(
        _("allowlist"),
        blank=True,
        help_text=_("Telegram user ids or @usernames, separated by commas or new lines."),
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = _("bot")
        verbose_name_plural = _("bots")
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def token(self) -> str:
        return crypto.decrypt(self.token_encrypted) if self.token_encrypted else ""

    @token.setter
    def token(self, value: str) -> None:
        self.token_encrypted = crypto.encrypt(value)
        self.token_hint = crypto.mask(value)

    def allowlist(self) -> set[str]:
        """The allowlist entries, normalised: ids as digits, usernames lower-case without '@'."""
        raw = self.allowed_users.replace("\n", ",").split(",")
        return {entry.strip().lstrip("@").lower() for entry in raw if entry.strip()}

    def allows(self, *, telegram_id: int, username: str | None) -> bool:
        if self.access_policy == AccessPolicy.OPEN:
            return True
        entries = self.allowlist()
        if "*" in entries:
            return True
        return str(telegram_id) in entries or bool(username and username.lower() in entries)


class Conversation(models.Model):
    """One thread of messages between a person and Jarvis, on one channel."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations")
    channel = models.CharField(_("channel"), max_length=16, choices=Channel.choices)
    bot = models.ForeignKey(Bot, on_delete=models.SET_NULL, null=True, blank=True, related_name="conversations")
    telegram_chat_id = models.BigIntegerField(_("Telegram chat id"), null=True, blank=True)
    title = models.CharField(_("title"), max_length=200, blank=True)
    persona = models.ForeignKey(Persona, on_delete=models.SET_NULL, null=True, blank=True)
    model = models.CharField(
        _("model"),
        max_length=100,
        blank=True,
        help_text=_("Chosen among the models offered to people; empty, or no longer offered: the persona's model."),
    )
    summary = models.TextField(_("summary"), blank=True, help_text=_("Older history, summarised."))
    summary_until_id = models.BigIntegerField(
        _("summary covers messages up to id"), null=True, blank=True, editable=False
    )
    is_active = models.BooleanField(
        _("active"), default=True, help_text=_("The conversation new messages in its chat go to.")
    )
    voice_answers = models.BooleanField(
        _("voice answers"),
        null=True,
        blank=True,
        help_text=_("Telegram answers as voice notes (switched with /voice). Empty: the persona's default."),
    )
    # A lease, so that processes on several machines never answer in one conversation at once.
    answering_until = models.DateTimeField(null=True, blank=True, editable=False)
    answering_token = models.CharField(max_length=32, blank=True, editable=False)
    created_at = models.DateTimeField(_("started"), default=timezone.now, db_index=True)
    updated_at = models.DateTimeField(_("last message"), default=timezone.now)

    class Meta:
        verbose_name = _("conversation")
        verbose_name_plural = _("conversations")
        ordering = ["-updated_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["bot", "telegram_chat_id"],
                condition=Q(is_active=True, telegram_chat_id__isnull=False),
                name="one_active_conversation_per_chat",
            )
        ]
        indexes = [
            models.Index(fields=["user", "-updated_at"], name="conv_user_recent"),
            # The admin's changelist: latest first (ties broken by id) over millions of conversations.
            models.Index(fields=["updated_at", "id"], name="conv_recent"),
        ]

    def __str__(self) -> str:
        return self.title or f"Conversation {self.pk}"

    @property
    def effective_model(self) -> str:
        return self.model or (self.persona.model if self.persona else "") or settings.OPENAI_MODEL


class Role(models.TextChoices):
    SYSTEM = "system", _("System")
    USER = "user", _("User")
    ASSISTANT = "assistant", _("Assistant")


class MessageStatus(models.TextChoices):
    PENDING = "pending", _("Pending")
    COMPLETE = "complete", _("Complete")
    FAILED = "failed", _("Failed")
    INCOMPLETE = "incomplete", _("Incomplete")
    SUPERSEDED = "superseded", _("Replaced by a retry or an edit")


class MessageQuerySet(models.QuerySet):
    """Error texts are masked (tokens, keys) however a message is written: update and bulk_create too."""

    def update(self, **kwargs: object) -> int:
        if kwargs.get("error"):
            kwargs["error"] = stored_text_redact(kwargs["error"])
        return super().update(**kwargs)

    def bulk_create(self, objs: Iterable[Message], *args: object, **kwargs: object) -> list[Message]:
        objs = list(objs)
        for obj in objs:
            obj.error = stored_text_redact(obj.error)
        return super().bulk_create(objs, *args, **kwargs)


class Message(models.Model):
    """A message in a conversation; an answer is created `pending` when its question arrives."""

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    role = models.CharField(_("role"), max_length=16, choices=Role.choices)
    sender = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text=_("Who wrote a user message (in a group, not always the conversation's owner)."),
    )
    content = models.TextField(_("content"), blank=True)
    attachments = models.JSONField(
        _("attachments"), default=list, blank=True, help_text=_("Images sent with the message (data URLs).")
    )
    status = models.CharField(_("status"), max_length=16, choices=MessageStatus.choices, default=MessageStatus.COMPLETE)
    token_count = models.PositiveIntegerField(
        _("tokens in content"), default=0, help_text=_("Counted once when stored, to build context quickly.")
    )
    tool_tokens = models.PositiveIntegerField(
        _("tokens of tool calls"),
        default=0,
        help_text=_("What the answer's tool calls and results take in later context; 0: it used no tools."),
    )
    input_tokens = models.PositiveIntegerField(_("input tokens"), default=0)
    output_tokens = models.PositiveIntegerField(_("output tokens"), default=0)
    latency_ms = models.PositiveIntegerField(_("latency (ms)"), null=True, blank=True)
    model = models.CharField(_("model"), max_length=100, blank=True)
    telegram_message_id = models.BigIntegerField(_("Telegram message id"), null=True, blank=True)
    telegram_reply_ids = models.JSONField(_("Telegram ids of the answer's messages"), default=list, blank=True)
    error = models.TextField(_("error"), blank=True)
    created_at = models.DateTimeField(_("time"), default=timezone.now)

    objects = MessageQuerySet.as_manager()

    class Meta:
        verbose_name = _("message")
        verbose_name_plural = _("messages")
        ordering = ["id"]
        indexes = [
            models.Index(fields=["conversation", "id"], name="msg_conv_latest"),
            models.Index(fields=["status", "role"], name="msg_status_role"),
            models.Index(fields=["created_at"], name="msg_created"),
        ]

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:60]}"

    def save(self, *args: object, **kwargs: object) -> None:
        update_fields = kwargs.get("update_fields")
        if update_fields is None or "error" in update_fields:
            self.error = stored_text_redact(self.error)
        super().save(*args, **kwargs)


class ModelPrice(models.Model):
    """The list price of a model from a moment on; the latest row not in the future is in force."""

    model = models.CharField(_("model"), max_length=100, db_index=True)
    input_per_mtok = models.DecimalField(
        _("input USD / 1M tokens"), **UNIT_PRICE, default=Decimal("0"), validators=[MinValueValidator(Decimal("0"))]
    )
    cached_input_per_mtok = models.DecimalField(
        _("cached input USD / 1M tokens"),
        **UNIT_PRICE,
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal("0"))],
        help_text=_("Empty: cached input costs as much as input."),
    )
    output_per_mtok = models.DecimalField(
        _("output USD / 1M tokens"), **UNIT_PRICE, default=Decimal("0"), validators=[MinValueValidator(Decimal("0"))]
    )
    audio_per_minute = models.DecimalField(
        _("USD / audio minute"), **UNIT_PRICE, default=Decimal("0"), validators=[MinValueValidator(Decimal("0"))]
    )
    image_input_per_mtok = models.DecimalField(
        _("image input USD / 1M tokens"),
        **UNIT_PRICE,
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal("0"))],
        help_text=_("Image models billed by tokens: tokens of pictures sent to be edited. Empty: as input."),
    )
    image_output_per_mtok = models.DecimalField(
        _("image output USD / 1M tokens"),
        **UNIT_PRICE,
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal("0"))],
        help_text=_("Image models billed by tokens: tokens of the pictures made. Empty: as output."),
    )
    per_mchars = models.DecimalField(
        _("USD / 1M characters"),
        **UNIT_PRICE,
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal("0"))],
        help_text=_("Speech models billed by the characters they read out (tts-1). Empty: not billed that way."),
    )
    context_window = models.PositiveIntegerField(_("context window (tokens)"), null=True, blank=True)
    supports_images = models.BooleanField(_("accepts images"), default=False)
    offered = models.BooleanField(
        _("offered to people"),
        default=False,
        help_text=_(
            "People may choose this chat model for a conversation (on the web page and with /model in Telegram). "
            "The row in force decides."
        ),
    )
    valid_from = models.DateTimeField(_("valid from"), default=timezone.now)

    class Meta:
        verbose_name = _("model price")
        verbose_name_plural = _("model prices")
        ordering = ["model", "-valid_from"]
        constraints = [models.UniqueConstraint(fields=["model", "valid_from"], name="one_price_per_model_and_time")]

    def __str__(self) -> str:
        return f"{self.model} from {self.valid_from:%Y-%m-%d}"


class ModelImagePrice(models.Model):
    """What one picture of a size and quality costs, for image models billed per picture (dall-e-3)."""

    price = models.ForeignKey(ModelPrice, on_delete=models.CASCADE, related_name="image_prices")
    size = models.CharField(_("size"), max_length=32, help_text=_("WIDTHxHEIGHT, e.g. 1024x1024."))
    quality = models.CharField(
        _("quality"), max_length=16, blank=True, help_text=_("e.g. standard or hd. Empty: any quality.")
    )
    usd_per_image = models.DecimalField(_("USD / picture"), **UNIT_PRICE, validators=[MinValueValidator(Decimal("0"))])

    class Meta:
        verbose_name = _("price per picture")
        verbose_name_plural = _("prices per picture")
        ordering = ["size", "quality"]
        constraints = [models.UniqueConstraint(fields=["price", "size", "quality"], name="one_price_per_picture_kind")]

    def __str__(self) -> str:
        from botapp.usage import format_usd  # botapp.usage reads these models

        return f"{self.size} {self.quality or '*'}: {format_usd(self.usd_per_image)}"


class UsageKind(models.TextChoices):
    CHAT = "chat", _("Chat")
    TRANSCRIPTION = "transcription", _("Transcription")
    SUMMARY = "summary", _("Summary")
    TITLE = "title", _("Title")
    IMAGE = "image", _("Picture")
    SPEECH = "speech", _("Speech")
    EMBEDDING = "embedding", _("Embedding")


class UsageStatus(models.TextChoices):
    COMPLETE = "complete", _("Complete")
    INCOMPLETE = "incomplete", _("Incomplete")


class UsageRecordQuerySet(models.QuerySet):
    def update(self, **kwargs: object) -> int:
        raise TypeError("The usage ledger is append-only.")

    def delete(self) -> tuple[int, dict[str, int]]:
        raise TypeError("The usage ledger is append-only: usage records are never deleted.")

    def _raw_delete(self, using: str) -> int:
        raise TypeError("The usage ledger is append-only: usage records are never deleted.")


class UsageRecord(models.Model):
    """One row of the append-only ledger: a model call, its tokens, the prices used and its cost.

    Rows never leave. Every relation is SET_NULL, so deleting a person, conversation, message, bot or price
    (retention included) only unlinks the rows it touched; their tokens, prices and cost stay.
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="usage_records"
    )
    conversation = models.ForeignKey(Conversation, on_delete=models.SET_NULL, null=True, blank=True)
    message = models.ForeignKey(Message, on_delete=models.SET_NULL, null=True, blank=True)
    channel = models.CharField(_("channel"), max_length=16, choices=Channel.choices)
    bot = models.ForeignKey(Bot, on_delete=models.SET_NULL, null=True, blank=True)
    model = models.CharField(_("model"), max_length=100)
    kind = models.CharField(_("kind"), max_length=16, choices=UsageKind.choices)
    round = models.PositiveSmallIntegerField(
        _("round"), default=1, help_text=_("Which model call of the answer: each tool round calls the model again.")
    )
    input_tokens = models.PositiveIntegerField(_("input tokens"), default=0, help_text=_("Including cached."))
    cached_input_tokens = models.PositiveIntegerField(_("cached input tokens"), default=0)
    output_tokens = models.PositiveIntegerField(_("output tokens"), default=0)
    audio_seconds = models.DecimalField(_("audio seconds"), max_digits=12, decimal_places=3, default=Decimal("0"))
    image_input_tokens = models.PositiveIntegerField(
        _("image input tokens"), default=0, help_text=_("Of the input tokens: those of pictures.")
    )
    image_output_tokens = models.PositiveIntegerField(
        _("image output tokens"), default=0, help_text=_("Of the output tokens: those of pictures.")
    )
    characters = models.PositiveIntegerField(_("characters"), default=0, help_text=_("Read out by a speech model."))
    images = models.PositiveIntegerField(_("pictures"), default=0, help_text=_("Billed per picture."))
    image_size = models.CharField(_("picture size"), max_length=32, blank=True)
    image_quality = models.CharField(_("picture quality"), max_length=16, blank=True)
    price = models.ForeignKey(ModelPrice, on_delete=models.SET_NULL, null=True, blank=True, editable=False)
    input_price_per_mtok = models.DecimalField(**UNIT_PRICE, null=True, blank=True)
    cached_input_price_per_mtok = models.DecimalField(**UNIT_PRICE, null=True, blank=True)
    output_price_per_mtok = models.DecimalField(**UNIT_PRICE, null=True, blank=True)
    audio_price_per_minute = models.DecimalField(**UNIT_PRICE, null=True, blank=True)
    image_input_price_per_mtok = models.DecimalField(**UNIT_PRICE, null=True, blank=True)
    image_output_price_per_mtok = models.DecimalField(**UNIT_PRICE, null=True, blank=True)
    characters_price_per_m = models.DecimalField(**UNIT_PRICE, null=True, blank=True)
    image_price_each = models.DecimalField(**UNIT_PRICE, null=True, blank=True)
    cost_usd = models.DecimalField(_("cost (USD)"), **USD, default=Decimal("0"))
    priced = models.BooleanField(_("priced"), default=True, help_text=_("False: no price was known for the model."))
    status = models.CharField(_("status"), max_length=16, choices=UsageStatus.choices, default=UsageStatus.COMPLETE)
    estimated = models.BooleanField(
        _("estimated"), default=False, help_text=_("Tokens counted by Jarvis because the provider reported none.")
    )
    created_at = models.DateTimeField(_("time"), default=timezone.now)

    objects = UsageRecordQuerySet.as_manager()

    class Meta:
        verbose_name = _("usage record")
        verbose_name_plural = _("usage records")
        ordering = ["-created_at"]
        constraints = [
            # Nothing is billed twice: one charge of each kind per message and model call round.
            models.UniqueConstraint(
                fields=["message", "kind", "round"],
                condition=Q(message__isnull=False),
                name="one_charge_per_message_kind_round",
            )
        ]
        indexes = [
            models.Index(fields=["user", "created_at"], name="usage_user_time"),
            models.Index(fields=["created_at"], name="usage_time"),
            models.Index(fields=["model", "created_at"], name="usage_model_time"),
        ]

    def __str__(self) -> str:
        from botapp.usage import format_usd  # botapp.usage reads these models

        return f"{self.kind} {self.model} {format_usd(self.cost_usd)}"

    def save(self, *args: object, **kwargs: object) -> None:
        if self.pk is not None and not self._state.adding:
            raise TypeError("The usage ledger is append-only: a usage record is never changed.")
        super().save(*args, **kwargs)

    def delete(self, *args: object, **kwargs: object) -> tuple[int, dict[str, int]]:
        raise TypeError("The usage ledger is append-only: a usage record is never deleted.")


class MediaKind(models.TextChoices):
    IMAGE = "image", _("Picture")
    SPEECH = "speech", _("Speech")


def media_upload_to(instance: MediaFile, filename: str) -> str:
    """Where a file goes in the storage: by kind and day, under a name nobody can guess."""
    suffix = PurePosixPath(filename).suffix.lower()[:8]
    return f"{instance.kind}/{timezone.now():%Y/%m/%d}/{secrets.token_hex(16)}{suffix}"


class MediaFile(models.Model):
    """A picture or a recording Jarvis made, kept in the file storage and shown with its conversation.

    Deleting the row deletes the file (botapp.media); the ledger row that paid for it stays.
    """

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="media")
    message = models.ForeignKey(
        Message,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="media",
        help_text=_("The answer it belongs to."),
    )
    usage = models.OneToOneField(
        UsageRecord, on_delete=models.SET_NULL, null=True, blank=True, related_name="media", editable=False
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    kind = models.CharField(_("kind"), max_length=16, choices=MediaKind.choices)
    file = models.FileField(_("file"), upload_to=media_upload_to, max_length=255)
    content_type = models.CharField(_("content type"), max_length=100)
    size_bytes = models.PositiveIntegerField(_("size (bytes)"))
    width = models.PositiveIntegerField(_("width"), null=True, blank=True)
    height = models.PositiveIntegerField(_("height"), null=True, blank=True)
    duration_seconds = models.DecimalField(_("duration (s)"), max_digits=9, decimal_places=3, null=True, blank=True)
    prompt = models.TextField(_("prompt"), blank=True, help_text=_("What the picture was made from."))
    model = models.CharField(_("model"), max_length=100, blank=True)
    created_at = models.DateTimeField(_("time"), default=timezone.now, db_index=True)

    class Meta:
        verbose_name = _("generated file")
        verbose_name_plural = _("generated files")
        ordering = ["id"]
        constraints = [
            # An answer is read out once; the recording is kept and played again.
            models.UniqueConstraint(fields=["message"], condition=Q(kind="speech"), name="one_recording_per_message")
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.pk}"


class ProcessedUpdate(models.Model):
    """A Telegram update as received: deduplicates redeliveries and lets a restart finish the work."""

    class State(models.TextChoices):
        RECEIVED = "received", _("Received")
        DONE = "done", _("Done")

    bot = models.ForeignKey(Bot, on_delete=models.CASCADE)
    update_id = models.BigIntegerField()
    payload = models.JSONField(default=dict)
    state = models.CharField(max_length=16, choices=State.choices, default=State.RECEIVED)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = _("Telegram update")
        verbose_name_plural = _("Telegram updates")
        constraints = [models.UniqueConstraint(fields=["bot", "update_id"], name="one_row_per_update")]
        indexes = [models.Index(fields=["bot", "state"], name="update_bot_state")]

    def __str__(self) -> str:
        return f"update {self.update_id} ({self.state})"


class BotUser(models.Model):
    """A person who has talked to a bot: who a broadcast reaches, and whether they blocked the bot."""

    bot = models.ForeignKey(Bot, on_delete=models.CASCADE, related_name="bot_users")
    identity = models.ForeignKey(TelegramIdentity, on_delete=models.CASCADE, related_name="bot_memberships")
    blocked_bot_at = models.DateTimeField(
        _("blocked the bot at"),
        null=True,
        blank=True,
        help_text=_("Set when Telegram says the person blocked the bot."),
    )
    first_seen = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = _("bot user")
        verbose_name_plural = _("bot users")
        constraints = [models.UniqueConstraint(fields=["bot", "identity"], name="one_membership_per_bot")]

    def __str__(self) -> str:
        return f"{self.identity} on {self.bot}"


class TelegramLinkCode(models.Model):
    """A one-time code from /link in Telegram that joins a Telegram identity to a web account."""

    identity = models.ForeignKey(TelegramIdentity, on_delete=models.CASCADE, related_name="link_codes")
    code = models.CharField(max_length=16, unique=True)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = _("Telegram link code")
        verbose_name_plural = _("Telegram link codes")

    def __str__(self) -> str:
        return f"link code for {self.identity}"


class WebSignInLink(models.Model):
    """A one-time link from /web in Telegram that signs its Telegram identity in on the web page."""

    identity = models.ForeignKey(TelegramIdentity, on_delete=models.CASCADE, related_name="sign_in_links")
    # Only a digest is kept: the link itself was sent to the person once and is never shown again.
    token_digest = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = _("web sign-in link")
        verbose_name_plural = _("web sign-in links")

    def __str__(self) -> str:
        return f"sign-in link for {self.identity}"


class Invitation(models.Model):
    """A one-time link an admin gives someone to create their own web account."""

    token_digest = models.CharField(max_length=64, unique=True, editable=False)
    note = models.CharField(
        _("for"), max_length=200, blank=True, help_text=_("Whom the invitation is for: a reminder for admins.")
    )
    email = models.EmailField(_("email"), blank=True, help_text=_("Filled in on the sign-up form; may be changed."))
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+", editable=False
    )
    created_at = models.DateTimeField(_("created"), default=timezone.now, editable=False)
    expires_at = models.DateTimeField(_("expires"))
    used_at = models.DateTimeField(_("used"), null=True, blank=True, editable=False)
    used_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("account created"),
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        editable=False,
    )

    class Meta:
        verbose_name = _("invitation")
        verbose_name_plural = _("invitations")
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Invitation {self.pk}" + (f" for {self.note}" if self.note else "")


class Broadcast(models.Model):
    """A message an admin sends to all of a bot's users, delivered by a background task."""

    class State(models.TextChoices):
        QUEUED = "queued", _("Queued")
        SENDING = "sending", _("Sending")
        DONE = "done", _("Done")
        FAILED = "failed", _("Failed")

    bot = models.ForeignKey(Bot, on_delete=models.CASCADE, related_name="broadcasts")
    text = models.TextField(_("text"))
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    state = models.CharField(_("state"), max_length=16, choices=State.choices, default=State.QUEUED)
    sent_count = models.PositiveIntegerField(_("sent"), default=0)
    failed_count = models.PositiveIntegerField(_("failed"), default=0)
    blocked_count = models.PositiveIntegerField(_("blocked the bot"), default=0)
    created_at = models.DateTimeField(_("created"), default=timezone.now)
    finished_at = models.DateTimeField(_("finished"), null=True, blank=True)

    class Meta:
        verbose_name = _("broadcast")
        verbose_name_plural = _("broadcasts")
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Broadcast {self.pk} via {self.bot}"


class _DailySums(models.Model):
    """What the dashboard's caches add up per group of ledger rows."""

    calls = models.PositiveIntegerField()
    input_tokens = models.PositiveBigIntegerField()
    cached_input_tokens = models.PositiveBigIntegerField()
    output_tokens = models.PositiveBigIntegerField()
    cost_usd = models.DecimalField(**USD)

    class Meta:
        abstract = True


class UsageDailyTotal(_DailySums):
    """The ledger summed per local day, model, bot, channel and priced flag: a cache the dashboard checks.

    Rebuilt from the ledger whenever the number of ledger rows in its days no longer matches `calls`
    (the ledger is append-only, so a matching count means the sums are still right).
    """

    zone = models.CharField(max_length=64)
    day = models.DateField()
    model = models.CharField(max_length=100)
    bot = models.ForeignKey(Bot, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    channel = models.CharField(max_length=16, choices=Channel.choices)
    priced = models.BooleanField()

    class Meta:
        verbose_name = _("daily usage total")
        verbose_name_plural = _("daily usage totals")
        indexes = [models.Index(fields=["zone", "day"], name="usage_daily_zone_day")]

    def __str__(self) -> str:
        return f"{self.day} {self.model} {self.channel}"


class UsageDailyPersonTotal(_DailySums):
    """The ledger summed per local day and person: the dashboard's top spenders without reading every row.

    Always written and deleted together with the UsageDailyTotal rows of the same days, from the same read of
    the ledger, so their check against the ledger holds for these too.
    """

    zone = models.CharField(max_length=64)
    day = models.DateField()
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    class Meta:
        verbose_name = _("daily usage total per person")
        verbose_name_plural = _("daily usage totals per person")
        indexes = [models.Index(fields=["zone", "day"], name="usage_person_zone_day")]

    def __str__(self) -> str:
        return f"{self.day} person {self.user_id}"


# --- Tools --------------------------------------------------------------------------------------


class McpServer(models.Model):
    """An MCP server Jarvis calls tools on (streamable HTTP); the optional auth header is encrypted at rest."""

    name = models.SlugField(
        _("name"), max_length=40, unique=True, help_text=_("Short and unique; the model sees tools as name__tool.")
    )
    url = models.URLField(_("URL"), max_length=500, help_text=_("The streamable HTTP endpoint, e.g. http://host/mcp"))
    auth_header_name = models.CharField(_("auth header"), max_length=64, blank=True, default="Authorization")
    auth_header_encrypted = models.TextField(_("auth header value (encrypted)"), blank=True, editable=False)
    auth_header_hint = models.CharField(_("auth header value"), max_length=20, blank=True, editable=False)
    enabled = models.BooleanField(_("enabled"), default=True, help_text=_("Off: none of its tools is offered."))
    from_environment = models.BooleanField(
        _("from MCP_SERVERS"), default=False, editable=False, help_text=_("Registered by set-up from MCP_SERVERS.")
    )
    tools_listed_at = models.DateTimeField(_("tools listed"), null=True, blank=True, editable=False)
    list_error = models.TextField(_("last listing error"), blank=True, editable=False)
    created_at = models.DateTimeField(_("created"), default=timezone.now)

    class Meta:
        verbose_name = _("MCP server")
        verbose_name_plural = _("MCP servers")
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def auth_header_value(self) -> str:
        return crypto.decrypt(self.auth_header_encrypted) if self.auth_header_encrypted else ""

    @auth_header_value.setter
    def auth_header_value(self, value: str) -> None:
        self.auth_header_encrypted = crypto.encrypt(value) if value else ""
        self.auth_header_hint = crypto.mask(value)


class ToolKind(models.TextChoices):
    BUILTIN = "builtin", _("Built in")
    MCP = "mcp", _("MCP")


class Tool(models.Model):
    """A tool the model may call: a built-in one (code in botapp.tools) or one listed by an MCP server."""

    name = models.CharField(_("name"), max_length=64, unique=True, help_text=_("The function name the model sees."))
    kind = models.CharField(_("kind"), max_length=16, choices=ToolKind.choices)
    server = models.ForeignKey(
        McpServer, verbose_name=_("MCP server"), on_delete=models.CASCADE, null=True, blank=True, related_name="tools"
    )
    remote_name = models.CharField(_("name on the server"), max_length=128, blank=True)
    title = models.CharField(_("title"), max_length=200, blank=True)
    description = models.TextField(_("description"), blank=True, help_text=_("What the model is told the tool does."))
    input_schema = models.JSONField(_("arguments (JSON schema)"), default=dict, blank=True)
    enabled = models.BooleanField(
        _("enabled everywhere"), default=True, help_text=_("Off: no persona gets this tool, whatever it enables.")
    )
    available = models.BooleanField(
        _("listed by its server"), default=True, editable=False, help_text=_("False: the server no longer lists it.")
    )
    # Set-up enables a new tool for the default persona once; after that the admin's choice stands.
    default_persona_done = models.BooleanField(default=False, editable=False)
    created_at = models.DateTimeField(_("created"), default=timezone.now)

    class Meta:
        verbose_name = _("tool")
        verbose_name_plural = _("tools")
        ordering = ["kind", "name"]

    def __str__(self) -> str:
        return self.name


class ToolCallStatus(models.TextChoices):
    RUNNING = "running", _("Running")
    OK = "ok", _("Done")
    ERROR = "error", _("Failed")
    TIMEOUT = "timeout", _("Timed out")
    REFUSED = "refused", _("Refused")


class ToolCall(models.Model):
    """One tool call the model asked for while writing an answer: what it asked, what it got, how long it took."""

    message = models.ForeignKey(Message, verbose_name=_("answer"), on_delete=models.CASCADE, related_name="tool_calls")
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="+")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("person"),
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    round = models.PositiveSmallIntegerField(_("round"), help_text=_("The model call of the answer that asked."))
    position = models.PositiveSmallIntegerField(_("position"), default=0)
    call_id = models.CharField(_("call id"), max_length=100)
    tool = models.ForeignKey(Tool, on_delete=models.SET_NULL, null=True, blank=True, related_name="calls")
    tool_name = models.CharField(_("tool"), max_length=128)
    arguments = models.TextField(_("arguments"), blank=True, help_text=_("JSON, as the model wrote it."))
    status = models.CharField(
        _("status"), max_length=16, choices=ToolCallStatus.choices, default=ToolCallStatus.RUNNING
    )
    result = models.TextField(_("result"), blank=True, help_text=_("What the model was given (capped)."))
    result_chars = models.PositiveIntegerField(_("result size (characters)"), default=0)
    error = models.TextField(_("error"), blank=True)
    sources = models.JSONField(_("sources"), default=list, blank=True)
    duration_ms = models.PositiveIntegerField(_("duration (ms)"), null=True, blank=True)
    token_count = models.PositiveIntegerField(_("tokens"), default=0)
    created_at = models.DateTimeField(_("time"), default=timezone.now)

    class Meta:
        verbose_name = _("tool call")
        verbose_name_plural = _("tool calls")
        ordering = ["-id"]
        constraints = [models.UniqueConstraint(fields=["message", "round", "position"], name="one_tool_call_per_slot")]
        indexes = [
            models.Index(fields=["created_at"], name="toolcall_time"),
            models.Index(fields=["tool_name", "created_at"], name="toolcall_tool_time"),
            models.Index(fields=["user", "created_at"], name="toolcall_user_time"),
        ]

    def __str__(self) -> str:
        return f"{self.tool_name} ({self.get_status_display()})"


class ModelToolSupport(models.Model):
    """A model (or the server behind it) that refused a request with tools: it is asked without them."""

    model = models.CharField(_("model"), max_length=100, unique=True)
    error = models.TextField(_("what the provider said"), blank=True)
    noted_at = models.DateTimeField(_("noted"), default=timezone.now)

    class Meta:
        verbose_name = _("model without tools")
        verbose_name_plural = _("models without tools")
        ordering = ["model"]

    def __str__(self) -> str:
        return self.model


# Documents and knowledge bases live in their own module; imported here so Django finds their models.
from botapp.documents.models import (  # noqa: E402, F401
    Document,
    DocumentChunk,
    DocumentFile,
    KnowledgeBase,
    MessageExcerpt,
)
