"""HMAC-SHA256 webhook signatures: ``X-Clipwatch-Signature: sha256=<hex>`` over the exact body bytes."""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Clipwatch-Signature"
IDEMPOTENCY_HEADER = "X-Clipwatch-Idempotency-Key"
TIMESTAMP_HEADER = "X-Clipwatch-Timestamp"
_PREFIX = "sha256="


def _key(secret: str | bytes) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)


def sign_body(body: bytes, secret: str | bytes) -> str:
    """The signature header value for `body`: ``"sha256=" + hex(HMAC-SHA256(secret, body))``."""
    return _PREFIX + hmac.new(_key(secret), body, hashlib.sha256).hexdigest()


def verify_signature(body: bytes, header: str | None, secret: str | bytes) -> bool:
    """Whether `header` is the valid signature of the exact `body` bytes (constant-time comparison).

    For receivers: verify against the raw request body before parsing it. A missing or malformed header is False.
    """
    header = (header or "").strip()
    if not header.startswith(_PREFIX):
        return False
    return hmac.compare_digest(sign_body(body, secret).encode("ascii"), header.encode("ascii", "replace"))
