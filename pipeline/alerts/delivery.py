"""One webhook POST attempt and the retry policy around it: what failed, whether trying again can help, when.

Retried: timeouts, refused or broken connections, HTTP 408/425/429 and 5xx. Not retried (dead-lettered at once):
other statuses outside 2xx (a 4xx will not fix itself; a 3xx is not followed, as a redirect would turn the POST
into a GET), and requests that cannot be built (an invalid URL).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import requests
from pydantic import BaseModel, ConfigDict, Field, model_validator
from requests.exceptions import InvalidSchema, InvalidURL, MissingSchema

from pipeline import __version__
from pipeline.alerts.signing import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, Scheme, signature_header
from pipeline.errors import one_line

RETRYABLE_STATUSES = frozenset({408, 425, 429}) | frozenset(range(500, 600))
USER_AGENT = f"clipwatch-webhook/{__version__}"


class RetryPolicy(BaseModel):
    """Exponential back-off: after failed attempt ``a`` wait ``min(max_delay_s, base_delay_s * multiplier**(a-1))``.

    The defaults ride out long outages: first retry after ~1 s, delays capped at 10 min, and a delivery is given
    up (dead-lettered) once ``max_age_s`` (24 h) have passed since its first attempt, or after ``max_attempts``
    attempts when set. ``jitter`` removes a random fraction (up to ``jitter``) of each delay so that many senders
    do not retry in lockstep; draws come from ``random.Random(seed)``, so a fixed seed gives a fixed sequence.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_attempts: int | None = Field(None, ge=1, description="attempts per URL, the first included; None: no limit "
                                                              "but max_age_s")
    base_delay_s: float = Field(1.0, gt=0.0)
    max_delay_s: float = Field(600.0, gt=0.0)
    multiplier: float = Field(2.0, ge=1.0)
    jitter: float = Field(0.2, ge=0.0, le=1.0)
    max_age_s: float | None = Field(86_400.0, gt=0.0, description="give up this long after the first attempt; "
                                                                  "None: no limit but max_attempts")
    seed: int | None = None

    @model_validator(mode="after")
    def _check(self) -> RetryPolicy:
        if self.base_delay_s > self.max_delay_s:
            raise ValueError("base_delay_s must not exceed max_delay_s")
        if self.max_attempts is None and self.max_age_s is None:
            raise ValueError("set max_attempts or max_age_s, or a dead endpoint is retried forever")
        return self

    def delay(self, failed_attempts: int, rng: random.Random | None = None, retry_after: float | None = None) -> float:
        """Seconds to wait after `failed_attempts` (>= 1) failures; a server's Retry-After is honoured up to max."""
        delay = min(self.max_delay_s, self.base_delay_s * self.multiplier ** (failed_attempts - 1))
        if self.jitter and rng is not None:
            delay *= 1.0 - self.jitter * rng.random()
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_delay_s))
        return delay

    def next_delay(self, failed_attempts: int, age_s: float, rng: random.Random | None = None,
                   retry_after: float | None = None) -> float | None:
        """Seconds until the next attempt after `failed_attempts` failures, the first `age_s` seconds ago; None when
        the schedule is exhausted. The last attempt falls at ``max_age_s`` at the latest."""
        if self.max_attempts is not None and failed_attempts >= self.max_attempts:
            return None
        if self.max_age_s is not None and age_s >= self.max_age_s:
            return None
        delay = self.delay(failed_attempts, rng, retry_after)
        return delay if self.max_age_s is None else min(delay, self.max_age_s - age_s)


@dataclass(frozen=True)
class AttemptResult:
    """How one POST ended. `error` is None on success, else one of ``http_status``, ``timeout``,
    ``connection_refused``, ``connection_error``, ``invalid_request``, ``request_error``."""

    ok: bool
    retryable: bool
    reason: str
    error: str | None = None
    status: int | None = None
    retry_after: float | None = None


def post_alert(
    session: requests.Session, url: str, body: bytes, key: str, secret: bytes, timeout_s: float,
    scheme: Scheme = "v2",
) -> AttemptResult:
    """POST `body` to `url` once, signed under `scheme` at this moment, and classify the outcome; never raises for
    network or HTTP errors."""
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        SIGNATURE_HEADER: signature_header(body, secret, scheme, timestamp),
        IDEMPOTENCY_HEADER: key,
        TIMESTAMP_HEADER: str(timestamp),
    }
    try:
        response = session.post(url, data=body, headers=headers, timeout=timeout_s, allow_redirects=False)
    except requests.Timeout:
        return AttemptResult(False, True, f"timed out after {timeout_s:g} s", "timeout")
    except (InvalidURL, InvalidSchema, MissingSchema) as exc:
        return AttemptResult(False, False, f"invalid request: {one_line(exc)}", "invalid_request")
    except requests.ConnectionError as exc:
        if _caused_by(exc, ConnectionRefusedError):
            return AttemptResult(False, True, "connection refused", "connection_refused")
        return AttemptResult(False, True, f"connection error: {_innermost(exc)}", "connection_error")
    except requests.RequestException as exc:
        return AttemptResult(False, True, f"request failed: {_innermost(exc)}", "request_error")
    with response:
        status = response.status_code
        reason = f"HTTP {status} {response.reason or ''}".strip()
        if 200 <= status < 300:
            return AttemptResult(True, False, reason, status=status)
        retryable = status in RETRYABLE_STATUSES
        if 300 <= status < 400:
            reason += " (redirects are not followed)"
        return AttemptResult(False, retryable, reason, "http_status", status, _retry_after(response))


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After", "").strip()
    return float(value) if value.isdigit() else None


def _causes(exc: BaseException):
    """`exc` and everything it wraps: args, urllib3's ``reason``, ``__cause__`` and ``__context__``."""
    stack, seen = [exc], set()
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked = [*current.args, getattr(current, "reason", None), current.__cause__, current.__context__]
        stack.extend(item for item in linked if isinstance(item, BaseException))


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    return any(isinstance(item, kind) for item in _causes(exc))


def _innermost(exc: BaseException) -> str:
    *_, last = _causes(exc)
    return one_line(last) or type(last).__name__
