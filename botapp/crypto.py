"""Encryption at rest for secrets stored in the database (bot tokens)."""

import base64
import hashlib
import secrets
from functools import cache

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings


@cache
def _fernet(key_material: str) -> Fernet:
    # Any string works as FIELD_ENCRYPTION_KEY: it is stretched to the 32 bytes Fernet needs.
    digest = hashlib.sha256(f"jarvis-field-encryption:{key_material}".encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def _key_material() -> str:
    return settings.FIELD_ENCRYPTION_KEY or settings.SECRET_KEY


def encrypt(plaintext: str) -> str:
    """Encrypt `plaintext` for storage."""
    return _fernet(_key_material()).encrypt(plaintext.encode()).decode()


def decrypt(ciphertext: str) -> str:
    """Decrypt a stored value; raises ValueError with a clear sentence if the key has changed."""
    try:
        return _fernet(_key_material()).decrypt(ciphertext.encode()).decode()
    except InvalidToken as exc:
        raise ValueError(
            "A stored secret cannot be decrypted: FIELD_ENCRYPTION_KEY (or DJANGO_SECRET_KEY) "
            "changed since it was saved. Enter the bot token again in the admin."
        ) from exc


def mask(secret: str) -> str:
    """Show a secret the way people recognise it, without revealing it: `1234…wxyz`."""
    if not secret:
        return ""
    if len(secret) <= 8:
        return "…" + secret[-2:]
    return f"{secret[:4]}…{secret[-4:]}"


def one_time_token() -> str:
    """A new secret for a one-time link: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    """What is stored of a one-time link's secret: its SHA-256, so a copy of the database signs nobody in."""
    return hashlib.sha256(token.encode()).hexdigest()
