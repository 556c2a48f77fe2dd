"""HMAC signatures of pickled records, on when a secret is set (``DURABLENB_SECRET``).

A pickle runs code when loaded, so a database that others can write to could run code in
your kernel. With a secret, every pickled record is signed (HMAC-SHA256) and records without
a valid signature are refused before they are unpickled. The signature covers the bytes, the
codec and the record's place (its workflow lineage and position), so a validly signed record
copied into another step or workflow is refused too.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

MAGIC = b"DNBS2"  # prefix of signed exception records: magic + 32-byte tag + pickle
OLD_MAGIC = b"DNBS1"  # earlier records, signed without their place: refused
SUFFIX = ";sig2="  # codec suffix of signed pickles
OLD_SUFFIX = ";sig="


@dataclass(frozen=True)
class Seal:
    """The key and the place a record is bound to."""

    key: bytes
    binding: bytes

    def _mac(self, kind: str, data: bytes | memoryview) -> hmac.HMAC:
        mac = hmac.new(self.key, b"durablenb-seal-v2\0", hashlib.sha256)
        mac.update(len(self.binding).to_bytes(4, "big") + self.binding)
        mac.update(kind.encode() + b"\0")
        mac.update(data)
        return mac

    def tag(self, kind: str, data: bytes | memoryview) -> str:
        """Hex signature of *data* encoded with codec *kind* at this place."""
        return self._mac(kind, data).hexdigest()

    def valid(self, kind: str, data: bytes | memoryview, signature: str) -> bool:
        return hmac.compare_digest(self.tag(kind, data), signature)


def binding(*parts: object) -> bytes:
    """The place of a record as bytes: its parts joined unambiguously."""
    out = bytearray()
    for part in parts:
        raw = str(part).encode("utf-8", "surrogatepass")
        out += len(raw).to_bytes(4, "big") + raw
    return bytes(out)
