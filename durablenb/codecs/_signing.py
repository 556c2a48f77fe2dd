"""HMAC signatures of pickled records, on when ``DURABLENB_SECRET`` is set.

A pickle runs code when loaded, so a database that others can write to could run code in
your kernel. With a secret, every pickled record is signed (HMAC-SHA256 over its payload)
and records without a valid signature are refused before they are unpickled.
"""

from __future__ import annotations

import hashlib
import hmac
import os

MAGIC = b"DNBS1"  # prefix of signed exception records: magic + 32-byte tag + pickle


def secret() -> bytes | None:
    """The signing key, or None when signing is off."""
    value = os.environ.get("DURABLENB_SECRET")
    return value.encode() if value else None


def tag(data: bytes | memoryview, key: bytes) -> str:
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def valid(data: bytes | memoryview, signature: str, key: bytes) -> bool:
    return hmac.compare_digest(tag(data, key), signature)
