"""Personas and model prices: what people may talk to, and what each model costs."""

from __future__ import annotations

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from botapp.models import ModelImagePrice, ModelPrice, Persona

# --- Personas and prices ------------------------------------------------------------------------


@admin.register(Persona)
class PersonaAdmin(admin.ModelAdmin):
    list_display = ["name", "model", "temperature", "max_output_tokens", "is_active", "is_default"]
    list_filter = ["is_active", "is_default"]
    search_fields = ["name", "model"]
    filter_horizontal = ["tools"]


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    list_display = [
        "model",
        "input_per_mtok",
        "cached_input_per_mtok",
        "output_per_mtok",
        "audio_per_minute",
        "image_output_per_mtok",
        "per_mchars",
        "offered",
        "valid_from",
    ]
    list_editable = ["offered"]
    list_filter = ["offered"]
    readonly_fields = ["picture_prices"]
    search_fields = ["model"]
    # A price change is best a new row from a new date: the ledger keeps the prices it used either way.
    save_as = True

    @admin.display(description=_("prices per picture"))
    def picture_prices(self, obj: ModelPrice) -> str:
        """Image models billed per picture (dall-e) have a price per size and quality, edited on their own page."""
        rows = list(obj.image_prices.all()) if obj.pk else []
        listing = ", ".join(str(row) for row in rows) or _("none (the model is billed by tokens or characters)")
        url = reverse("admin:botapp_modelimageprice_changelist") + (f"?price__id__exact={obj.pk}" if obj.pk else "")
        return format_html('{} · <a href="{}">{}</a>', listing, url, _("edit"))


@admin.register(ModelImagePrice)
class ModelImagePriceAdmin(admin.ModelAdmin):
    list_display = ["price", "size", "quality", "usd_per_image"]
    list_filter = ["price__model"]
    list_select_related = ["price"]
    search_fields = ["price__model", "size"]
