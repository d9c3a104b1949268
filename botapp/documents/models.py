"""The data of documents: knowledge bases, files, their chunks and the excerpts each answer was sent."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.db.models.signals import pre_delete
from django.dispatch import receiver
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from botapp import fulltext
from botapp.models import Bot, Channel, Conversation, Message, Persona

# The chunks' full-text index (created by migration 0011): FTS5 on SQLite, tsvector + GIN on PostgreSQL.
CHUNKS = fulltext.FullTextIndex("botapp_documentchunk_fts")


class KnowledgeBase(models.Model):
    """Files an admin uploads once; conversations with the personas it is attached to search it."""

    name = models.CharField(_("name"), max_length=100, unique=True)
    description = models.TextField(_("description"), blank=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("owner"),
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text=_("Charged for indexing the files uploaded here. Empty: the admin who creates it."),
    )
    personas = models.ManyToManyField(
        Persona,
        verbose_name=_("personas"),
        blank=True,
        related_name="knowledge_bases",
        help_text=_("Conversations with these personas search this knowledge base."),
    )
    created_at = models.DateTimeField(_("created"), default=timezone.now)

    class Meta:
        verbose_name = _("knowledge base")
        verbose_name_plural = _("knowledge bases")
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class DocumentState(models.TextChoices):
    QUEUED = "queued", _("Queued")
    READING = "reading", _("Reading")
    EMBEDDING = "embedding", _("Embedding")
    SUMMARISING = "summarising", _("Summarising")
    READY = "ready", _("Ready")
    FAILED = "failed", _("Failed")


BUSY_STATES = (DocumentState.QUEUED, DocumentState.READING, DocumentState.EMBEDDING, DocumentState.SUMMARISING)


class Document(models.Model):
    """A file in a knowledge base or in a conversation, and how far its indexing has come."""

    knowledge_base = models.ForeignKey(
        KnowledgeBase, on_delete=models.CASCADE, null=True, blank=True, related_name="documents"
    )
    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, null=True, blank=True, related_name="documents"
    )
    message = models.ForeignKey(
        Message,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text=_("The message that carried the file."),
    )
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    channel = models.CharField(_("channel"), max_length=16, choices=Channel.choices, default=Channel.SYSTEM)
    bot = models.ForeignKey(Bot, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    file_name = models.CharField(_("file name"), max_length=255)
    mime_type = models.CharField(_("type"), max_length=100, blank=True)
    size_bytes = models.PositiveBigIntegerField(_("size (bytes)"), default=0)
    sha256 = models.CharField(max_length=64, blank=True, editable=False)
    state = models.CharField(_("state"), max_length=16, choices=DocumentState.choices, default=DocumentState.QUEUED)
    progress_done = models.PositiveIntegerField(_("done"), default=0)
    progress_total = models.PositiveIntegerField(_("of"), default=0)
    reason = models.TextField(
        _("reason"), blank=True, help_text=_("Why it failed, or what it is ready without (for example embeddings).")
    )
    pages = models.PositiveIntegerField(_("pages"), null=True, blank=True)
    chunk_count = models.PositiveIntegerField(_("chunks"), default=0)
    token_count = models.PositiveIntegerField(_("tokens"), default=0)
    embedding_model = models.CharField(
        _("embedding model"), max_length=100, blank=True, help_text=_("Empty: searched by words only.")
    )
    embedding_dimensions = models.PositiveIntegerField(_("embedding dimensions"), default=0)
    summary = models.TextField(_("summary"), blank=True, help_text=_("Built piece by piece for a long file."))
    # Bumped whenever the chunks are replaced, so that processes holding its vectors in memory reload them.
    version = models.PositiveIntegerField(default=0, editable=False)
    # Written with every step of indexing: a run that stopped writing is dead and may be taken over.
    heartbeat_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(_("uploaded"), default=timezone.now)
    indexed_at = models.DateTimeField(_("indexed"), null=True, blank=True)

    class Meta:
        verbose_name = _("document")
        verbose_name_plural = _("documents")
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(knowledge_base__isnull=True) ^ Q(conversation__isnull=True),
                name="document_in_a_knowledge_base_or_a_conversation",
            )
        ]
        indexes = [
            models.Index(fields=["conversation", "state"], name="document_conversation_state"),
            models.Index(fields=["knowledge_base", "state"], name="document_kb_state"),
        ]

    def __str__(self) -> str:
        return self.file_name

    @property
    def busy(self) -> bool:
        return self.state in BUSY_STATES


class DocumentFile(models.Model):
    """The bytes of an uploaded file, in the database so any worker on any machine can (re-)index it."""

    document = models.OneToOneField(Document, on_delete=models.CASCADE, primary_key=True, related_name="file")
    data = models.BinaryField()

    class Meta:
        verbose_name = _("document file")
        verbose_name_plural = _("document files")

    def __str__(self) -> str:
        return f"file of document {self.document_id}"


class DocumentChunk(models.Model):
    """A piece of a document small enough to send with a question: its text, where it is, its embedding."""

    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="chunks")
    ordinal = models.PositiveIntegerField()
    heading = models.CharField(_("section"), max_length=500, blank=True)
    page_start = models.PositiveIntegerField(null=True, blank=True)
    page_end = models.PositiveIntegerField(null=True, blank=True)
    text = models.TextField()
    token_count = models.PositiveIntegerField(default=0)
    # int8 components and the scale that turns them back into the provider's floats (see documents.vectors).
    embedding = models.BinaryField(null=True, blank=True)
    embedding_scale = models.FloatField(null=True, blank=True)

    class Meta:
        verbose_name = _("document chunk")
        verbose_name_plural = _("document chunks")
        ordering = ["document", "ordinal"]
        constraints = [models.UniqueConstraint(fields=["document", "ordinal"], name="one_chunk_per_place")]

    def __str__(self) -> str:
        return f"{self.document_id}#{self.ordinal}"


class MessageExcerpt(models.Model):
    """What an answer was sent from a document: a chunk, or the whole text, with the label it was cited by."""

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="excerpts")
    document = models.ForeignKey(Document, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    # No constraint: re-indexing replaces chunks, and the record of what was sent stays.
    chunk = models.ForeignKey(
        DocumentChunk, on_delete=models.DO_NOTHING, db_constraint=False, null=True, blank=True, related_name="+"
    )
    label = models.PositiveIntegerField(_("label"))
    file_name = models.CharField(_("file name"), max_length=255)
    where = models.CharField(_("page or section"), max_length=300, blank=True)
    whole = models.BooleanField(_("whole document"), default=False)
    tokens = models.PositiveIntegerField(default=0)

    class Meta:
        verbose_name = _("excerpt sent")
        verbose_name_plural = _("excerpts sent")
        ordering = ["message", "label"]

    def __str__(self) -> str:
        return f"[{self.label}] {self.file_name} {self.where}".strip()


@receiver(pre_delete, sender=Document)
def _forget_words(sender: type[Document], instance: Document, **kwargs: object) -> None:
    """A removed document's chunks leave the full-text index too (the chunk rows themselves cascade)."""
    fulltext.index_remove(CHUNKS, within=DocumentChunk.objects.filter(document_id=instance.pk))
