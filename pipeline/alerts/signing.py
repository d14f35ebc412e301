"""HMAC-SHA256 webhook signatures in ``X-Clipwatch-Signature``, and their verification for receivers.

Two schemes, chosen by the sender's ``signature`` setting:

* ``v2`` (default): ``t=<unix seconds>,v1=<hex>``, the HMAC of ``b"<t>." + body`` (Stripe's layout). The signed
  timestamp lets a receiver refuse a captured request replayed later (`check_signature`, 5 min tolerance).
* ``v1`` (legacy): ``sha256=<hex>``, the HMAC of the body alone: valid forever once captured; kept for receivers
  written before v2.

The header is computed at each attempt, so a retried or replayed delivery carries a fresh timestamp; receivers
dedupe on ``X-Clipwatch-Idempotency-Key``.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Literal

from pipeline.alerts.errors import SignatureError

SIGNATURE_HEADER = "X-Clipwatch-Signature"
IDEMPOTENCY_HEADER = "X-Clipwatch-Idempotency-Key"
TIMESTAMP_HEADER = "X-Clipwatch-Timestamp"
DEFAULT_TOLERANCE_S = 300.0
"""How far a v2 timestamp may be from the receiver's clock, either way, by default (seconds)."""

Scheme = Literal["v1", "v2"]
_PREFIX = "sha256="


def _key(secret: str | bytes) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)


def _hmac(secret: str | bytes, message: bytes) -> str:
    return hmac.new(_key(secret), message, hashlib.sha256).hexdigest()


def sign_body(body: bytes, secret: str | bytes) -> str:
    """The legacy v1 header value for `body`: ``"sha256=" + hex(HMAC-SHA256(secret, body))``."""
    return _PREFIX + _hmac(secret, body)


def sign_timestamped(body: bytes, secret: str | bytes, timestamp: int) -> str:
    """The v2 header value: ``"t=<timestamp>,v1=" + hex(HMAC-SHA256(secret, b"<timestamp>." + body))``."""
    return f"t={int(timestamp)},v1={_hmac(secret, b'%d.' % int(timestamp) + body)}"


def signature_header(body: bytes, secret: str | bytes, scheme: Scheme = "v2", timestamp: int | None = None) -> str:
    """The ``X-Clipwatch-Signature`` value of `body` under `scheme` (v2 signs `timestamp`, default: now)."""
    if scheme == "v1":
        return sign_body(body, secret)
    if scheme == "v2":
        return sign_timestamped(body, secret, int(time.time()) if timestamp is None else timestamp)
    raise ValueError(f"unknown signature scheme {scheme!r}: expected 'v1' or 'v2'")


def check_signature(body: bytes, header: str | None, secret: str | bytes, *,
                    tolerance_s: float = DEFAULT_TOLERANCE_S, now: float | None = None) -> int:
    """Verify a v2 ``X-Clipwatch-Signature`` over the raw request `body`; returns the signed unix timestamp.

    For receivers: call it on the exact body bytes before parsing them. Raises `SignatureError` (``reason``:
    ``missing``, ``malformed``, ``legacy``, ``mismatch``, ``stale`` or ``future``) unless some ``v1=`` entry is
    the HMAC of ``b"<t>." + body`` (constant-time comparison) and ``t`` is within `tolerance_s` of `now`
    (default: this machine's clock). A legacy ``sha256=`` header is refused: it can be replayed forever.
    """
    header = (header or "").strip()
    if not header:
        raise SignatureError("missing", f"no {SIGNATURE_HEADER} header")
    if header.startswith(_PREFIX):
        raise SignatureError("legacy", f"{SIGNATURE_HEADER} is a v1 'sha256=' signature without a timestamp, "
                                       "which a replay would also pass; set the sender's signature to v2")
    timestamp, candidates = _parse_v2(header)
    expected = _hmac(secret, b"%d." % timestamp + body).encode("ascii")
    if not any(hmac.compare_digest(expected, candidate) for candidate in candidates):
        raise SignatureError("mismatch", f"{SIGNATURE_HEADER} does not match the body (another secret, or the "
                                         "body was altered)")
    age = (time.time() if now is None else now) - timestamp
    if age > tolerance_s:
        raise SignatureError("stale", f"{SIGNATURE_HEADER} timestamp is {age:.0f} s old, over the "
                                      f"{tolerance_s:g} s tolerance (a replayed request, or a clock off)")
    if -age > tolerance_s:
        raise SignatureError("future", f"{SIGNATURE_HEADER} timestamp is {-age:.0f} s in the future, over the "
                                       f"{tolerance_s:g} s tolerance (check the sender's clock)")
    return timestamp


def verify_signature(body: bytes, header: str | None, secret: str | bytes, *,
                     tolerance_s: float = DEFAULT_TOLERANCE_S, now: float | None = None) -> bool:
    """Whether `header` is a valid signature of the exact `body` bytes, under either scheme (never raises).

    A v2 header must also be fresh (see `check_signature`); a legacy v1 header is checked on the body alone. A
    receiver that wants replay protection uses `check_signature`, which refuses v1.
    """
    header = (header or "").strip()
    if header.startswith(_PREFIX):
        return hmac.compare_digest(sign_body(body, secret).encode("ascii"), header.encode("ascii", "replace"))
    try:
        check_signature(body, header, secret, tolerance_s=tolerance_s, now=now)
    except SignatureError:
        return False
    return True


def _parse_v2(header: str) -> tuple[int, list[bytes]]:
    """``t=<digits>`` (exactly once) and the ``v1=`` values (at least one); other ``key=value`` entries are
    ignored, so a later scheme can be sent alongside."""
    timestamps, candidates = [], []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            raise SignatureError("malformed", f"{SIGNATURE_HEADER}: {part.strip()[:32]!r} is not key=value; "
                                              "expected 't=<unix seconds>,v1=<hex>'")
        if key == "t":
            timestamps.append(value)
        elif key == "v1":
            candidates.append(value.lower().encode("ascii", "replace"))
    if len(timestamps) != 1 or not timestamps[0].isascii() or not timestamps[0].isdigit() or len(timestamps[0]) > 15:
        raise SignatureError("malformed", f"{SIGNATURE_HEADER}: expected one t=<unix seconds>, "
                                          "as in 't=<unix seconds>,v1=<hex>'")
    if not candidates:
        raise SignatureError("malformed", f"{SIGNATURE_HEADER}: no v1=<hex> entry; expected "
                                          "'t=<unix seconds>,v1=<hex>'")
    return int(timestamps[0]), candidates
