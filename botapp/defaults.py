"""The defaults Jarvis starts with: the "Jarvis" persona and public OpenAI list prices (shared/pricing.md)."""

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

# USD; standard tier, per shared/pricing.md. Admins edit prices later; ledger rows keep what they paid.
PRICES_VALID_FROM = datetime(2026, 1, 1, tzinfo=UTC)
CHAT_PRICES = [
    # model, input / 1M, cached input / 1M, output / 1M, context window, accepts images
    ("gpt-4o-mini", "0.15", "0.075", "0.60", 128_000, True),
    ("gpt-4o", "2.50", "1.25", "10.00", 128_000, True),
    ("gpt-4.1", "2.00", "0.50", "8.00", 1_047_576, True),
    ("gpt-4.1-mini", "0.40", "0.10", "1.60", 1_047_576, True),
    ("gpt-4.1-nano", "0.10", "0.025", "0.40", 1_047_576, True),
    ("gpt-5", "1.25", "0.125", "10.00", 400_000, True),
    ("gpt-5-mini", "0.25", "0.025", "2.00", 400_000, True),
    ("gpt-5-nano", "0.05", "0.005", "0.40", 400_000, True),
    ("gpt-3.5-turbo", "0.50", None, "1.50", 16_385, False),
]
TRANSCRIPTION_PRICES = [
    ("whisper-1", "0.006"),
    ("gpt-4o-transcribe", "0.006"),
    ("gpt-4o-mini-transcribe", "0.003"),
]
EMBEDDING_PRICES = [
    # model, input / 1M
    ("text-embedding-3-small", "0.02"),
    ("text-embedding-3-large", "0.13"),
    ("text-embedding-ada-002", "0.10"),
]
# Image models billed by tokens: text input, image input, image output / 1M tokens.
IMAGE_TOKEN_PRICES = [
    ("gpt-image-1", "5.00", "10.00", "40.00"),
    ("gpt-image-1-mini", "2.00", "2.50", "8.00"),
]
# Image models billed per picture: (size, quality, USD); an empty quality stands for any.
IMAGE_PICTURE_PRICES = [
    (
        "dall-e-3",
        [
            ("1024x1024", "standard", "0.040"),
            ("1024x1024", "hd", "0.080"),
            ("1024x1792", "standard", "0.080"),
            ("1792x1024", "standard", "0.080"),
            ("1024x1792", "hd", "0.120"),
            ("1792x1024", "hd", "0.120"),
        ],
    ),
    ("dall-e-2", [("1024x1024", "", "0.020"), ("512x512", "", "0.018"), ("256x256", "", "0.016")]),
]
# Speech models billed by tokens: text input / 1M tokens, audio output / 1M tokens.
SPEECH_TOKEN_PRICES = [("gpt-4o-mini-tts", "0.60", "12.00")]
# Speech models billed by characters: USD / 1M characters.
SPEECH_CHARACTER_PRICES = [("tts-1", "15.00"), ("tts-1-hd", "30.00")]
JARVIS_PROMPT = (
    "You are Jarvis, a personal assistant in the spirit of Tony Stark's: courteous, precise and brief. "
    "Answer in the language the user writes in. Use Markdown for code and lists when it helps."
)


def seed_defaults(model_price: Any, persona: Any) -> None:
    """Create the default prices and persona if missing; takes the model classes (real or historical)."""
    for model, input_price, cached, output, window, images in CHAT_PRICES:
        model_price.objects.get_or_create(
            model=model,
            valid_from=PRICES_VALID_FROM,
            defaults={
                "input_per_mtok": Decimal(input_price),
                "cached_input_per_mtok": Decimal(cached) if cached else None,
                "output_per_mtok": Decimal(output),
                "context_window": window,
                "supports_images": images,
            },
        )
    for model, per_minute in TRANSCRIPTION_PRICES:
        model_price.objects.get_or_create(
            model=model, valid_from=PRICES_VALID_FROM, defaults={"audio_per_minute": Decimal(per_minute)}
        )
    for model, input_price in EMBEDDING_PRICES:
        model_price.objects.get_or_create(
            model=model, valid_from=PRICES_VALID_FROM, defaults={"input_per_mtok": Decimal(input_price)}
        )
    persona.objects.get_or_create(
        name="Jarvis",
        defaults={
            "description": "The default assistant.",
            "system_prompt": JARVIS_PROMPT,
            "model": "",
            "temperature": Decimal("0.7"),
            "max_output_tokens": 1024,
        },
    )
    # Historical models from before the default persona existed have no such field.
    if any(field.name == "is_default" for field in persona._meta.get_fields()):
        if not persona.objects.filter(is_default=True).exists():
            persona.objects.filter(name="Jarvis").update(is_default=True)


def seed_media_prices(model_price: Any, image_price: Any) -> None:
    """Create the default image and speech prices if missing; takes the model classes (real or historical)."""
    for model, text_input, image_input, image_output in IMAGE_TOKEN_PRICES:
        model_price.objects.get_or_create(
            model=model,
            valid_from=PRICES_VALID_FROM,
            defaults={
                "input_per_mtok": Decimal(text_input),
                "image_input_per_mtok": Decimal(image_input),
                "image_output_per_mtok": Decimal(image_output),
            },
        )
    for model, pictures in IMAGE_PICTURE_PRICES:
        row, _created = model_price.objects.get_or_create(model=model, valid_from=PRICES_VALID_FROM)
        for size, quality, usd in pictures:
            image_price.objects.get_or_create(
                price=row, size=size, quality=quality, defaults={"usd_per_image": Decimal(usd)}
            )
    for model, text_input, audio_output in SPEECH_TOKEN_PRICES:
        model_price.objects.get_or_create(
            model=model,
            valid_from=PRICES_VALID_FROM,
            defaults={"input_per_mtok": Decimal(text_input), "output_per_mtok": Decimal(audio_output)},
        )
    for model, per_million in SPEECH_CHARACTER_PRICES:
        model_price.objects.get_or_create(
            model=model, valid_from=PRICES_VALID_FROM, defaults={"per_mchars": Decimal(per_million)}
        )
