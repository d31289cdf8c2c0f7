"""How an http trigger knows a request comes from its sender: the `auth:` schemes.

Each scheme checks a request (headers and raw body) and returns what identifies the
delivery, when the sender names one (GitHub's X-GitHub-Delivery, Standard Webhooks'
webhook-id, Stripe's event id, Slack's event_id): the trigger derives the task id from it,
so a delivery repeated by its sender is one task. Where the sender names none (the generic
scheme, Slack's slash commands), the signature names the request: the trigger derives the
task id from it, and a second request with it is a replay. Timestamped schemes refuse a
request whose timestamp is further than `tolerance` from now; every comparison of a secret
or a signature is constant-time (hmac.compare_digest).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import hmac
import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field, field_validator

from gateway.config.model import Duration
from gateway.errors import Unauthorized

from .base import TriggerOptions

# Whole seconds, as every provider sends them; the generic scheme also takes a fraction.
# Anything else (nan, inf, exponents, signs) is refused: `float()` would take "nan", and a
# NaN compares false with every bound, which would switch the window off.
_SECONDS = re.compile(r"^[0-9]{1,12}$")
_SECONDS_FRACTION = re.compile(r"^[0-9]{1,12}(\.[0-9]{1,9})?$")
_DELIVERY_ID = re.compile(r"^[\x21-\x7e]{1,200}$")  # printable ASCII: hashed into the task id
REPLAY_MEMORY = 100_000  # signatures remembered at most (per trigger, per replica)


class NoAuth(TriggerOptions):
    type: Literal["none"] = "none"


class BearerAuth(TriggerOptions):
    type: Literal["bearer"]
    token: str = Field(min_length=8, repr=False)


class HmacAuth(TriggerOptions):
    """The generic scheme: an HMAC-SHA256 hex digest of the body in `header`. A signature
    already accepted is a replay, refused (the task id is derived from it). With
    `timestamp_header` it signs "timestamp.body" and refuses stale timestamps, so a replay
    is refused for good; without one the signature covers only the body, so a replay is
    refused only while the first task is kept, and two events with the same body are one
    (`fngate check` warns)."""

    type: Literal["hmac-sha256"]
    secret: str = Field(min_length=1, repr=False)
    header: str = "X-Hub-Signature-256"
    prefix: str = "sha256="
    timestamp_header: str | None = None
    tolerance: Duration = Field(default=300.0, gt=0, le=86_400)


class GithubAuth(TriggerOptions):
    type: Literal["github"]
    secret: str = Field(min_length=1, repr=False)


class StripeAuth(TriggerOptions):
    type: Literal["stripe"]
    secret: str = Field(min_length=1, repr=False)  # the endpoint's signing secret, whsec_…
    tolerance: Duration = Field(default=300.0, gt=0, le=86_400)


class SlackAuth(TriggerOptions):
    type: Literal["slack"]
    secret: str = Field(min_length=1, repr=False)  # the app's signing secret
    tolerance: Duration = Field(default=300.0, gt=0, le=86_400)


class StandardWebhooksAuth(TriggerOptions):
    type: Literal["standard-webhooks"]
    secret: str = Field(min_length=1, repr=False)  # whsec_<base64>, as the sender shows it
    tolerance: Duration = Field(default=300.0, gt=0, le=86_400)

    @field_validator("secret")
    @classmethod
    def _base64(cls, value: str) -> str:
        standard_webhooks_key(value)
        return value


AuthOptions = NoAuth | BearerAuth | HmacAuth | GithubAuth | StripeAuth | SlackAuth | StandardWebhooksAuth
Auth = Annotated[AuthOptions, Field(discriminator="type")]


def standard_webhooks_key(secret: str) -> bytes:
    encoded = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)  # padding optional
    except (binascii.Error, ValueError):
        key = b""
    if not key:
        raise ValueError("must be whsec_ followed by base64, as the sender shows it")
    return key


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def header_bytes(text: str) -> bytes:
    """A header's bytes as sent: aiohttp decodes bytes that are not UTF-8 as surrogates,
    which a plain encode() refuses (that was a 500 for a garbled signature header)."""
    return text.encode("utf-8", "surrogateescape")


def _same(presented: str | bytes, expected: str | bytes) -> bool:
    a = header_bytes(presented) if isinstance(presented, str) else presented
    b = header_bytes(expected) if isinstance(expected, str) else expected
    return hmac.compare_digest(a, b)


def _timestamp(value: str | None, name: str, tolerance: float, now: float, *, fraction: bool = False) -> float:
    """The request's timestamp, refused when malformed or outside now ± tolerance."""
    pattern = _SECONDS_FRACTION if fraction else _SECONDS
    if value is None or not pattern.match(value.strip()):
        raise Unauthorized(f"missing or malformed {name} header")
    sent_at = float(value)
    if not math.isfinite(sent_at) or abs(now - sent_at) > tolerance:
        raise Unauthorized(f"{name} is outside the allowed {tolerance:g}s window")
    return sent_at


def _delivery_id(value: str | None) -> str | None:
    return value if value is not None and _DELIVERY_ID.match(value) else None


def _json_field(body: bytes, key: str) -> str | None:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    value = document.get(key) if isinstance(document, dict) else None
    return _delivery_id(value) if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a verified request tells: the sender's delivery id; or, where the sender names
    none, the signature that names the request (`replay_key`: seen again, it is a replay),
    and when its timestamp leaves the window (`expires`; None when no timestamp bounds it),
    after which the timestamp check refuses it anyway."""

    delivery_id: str | None = None
    replay_key: str | None = None
    expires: float | None = None


def verify(auth: AuthOptions, headers: Mapping[str, str], body: bytes, now: float | None = None) -> Verdict:
    """Check a request against its trigger's scheme; Unauthorized when it fails."""
    now = time.time() if now is None else now
    if isinstance(auth, NoAuth):
        return Verdict()
    if isinstance(auth, BearerAuth):
        header = headers.get("Authorization", "")
        presented = header[7:] if header.startswith("Bearer ") else ""
        if not _same(presented, auth.token):
            raise Unauthorized("missing or invalid bearer token")
        return Verdict()
    if isinstance(auth, HmacAuth):
        return _generic(auth, headers, body, now)
    if isinstance(auth, GithubAuth):
        signature = headers.get("X-Hub-Signature-256", "")
        expected = "sha256=" + _hmac(auth.secret.encode(), body).hex()
        if not _same(signature.strip().lower(), expected):
            raise Unauthorized("missing or invalid X-Hub-Signature-256")
        return Verdict(_delivery_id(headers.get("X-GitHub-Delivery")))
    if isinstance(auth, StripeAuth):
        return _stripe(auth, headers, body, now)
    if isinstance(auth, SlackAuth):
        stamp = headers.get("X-Slack-Request-Timestamp")
        sent_at = _timestamp(stamp, "X-Slack-Request-Timestamp", auth.tolerance, now)
        expected = "v0=" + _hmac(auth.secret.encode(), b"v0:" + str(stamp).strip().encode() + b":" + body).hex()
        signature = headers.get("X-Slack-Signature", "")
        if not _same(signature.strip(), expected):
            raise Unauthorized("missing or invalid X-Slack-Signature")
        event_id = _json_field(body, "event_id")  # Events API deliveries name themselves
        return Verdict(event_id, None if event_id else signature, sent_at + auth.tolerance)
    return _standard_webhooks(auth, headers, body, now)


def _generic(auth: HmacAuth, headers: Mapping[str, str], body: bytes, now: float) -> Verdict:
    signature = headers.get(auth.header, "")
    if not signature.startswith(auth.prefix):
        raise Unauthorized(f"missing or malformed {auth.header} header")
    signed, expires = body, None
    if auth.timestamp_header:
        stamp = headers.get(auth.timestamp_header)
        sent_at = _timestamp(stamp, auth.timestamp_header, auth.tolerance, now, fraction=True)
        signed = str(stamp).strip().encode() + b"." + body
        expires = sent_at + auth.tolerance  # after that, the timestamp check refuses it anyway
    expected = auth.prefix + _hmac(auth.secret.encode(), signed).hex()
    if not _same(signature.strip().lower(), expected.lower()):
        raise Unauthorized(f"invalid signature in {auth.header}")
    return Verdict(replay_key=expected.lower(), expires=expires)


def _stripe(auth: StripeAuth, headers: Mapping[str, str], body: bytes, now: float) -> Verdict:
    # Stripe-Signature: t=1492774577,v1=<hex>[,v1=<hex>…][,v0=…]; v1 signs "t.body".
    stamp, candidates = None, []
    for part in headers.get("Stripe-Signature", "").split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            stamp = value
        elif key == "v1":
            candidates.append(value)
    _timestamp(stamp, "Stripe-Signature t=", auth.tolerance, now)
    if not candidates:
        raise Unauthorized("missing or malformed Stripe-Signature header")
    expected = _hmac(auth.secret.encode(), str(stamp).encode() + b"." + body).hex()
    # every candidate is compared (no early exit): a secret being rolled sends two
    matched = [_same(candidate.lower(), expected) for candidate in candidates]
    if not any(matched):
        raise Unauthorized("invalid signature in Stripe-Signature")
    return Verdict(_json_field(body, "id"))


def _standard_webhooks(auth: StandardWebhooksAuth, headers: Mapping[str, str], body: bytes, now: float) -> Verdict:
    message_id = headers.get("webhook-id")
    stamp = headers.get("webhook-timestamp")
    if not message_id:
        raise Unauthorized("missing webhook-id header")
    _timestamp(stamp, "webhook-timestamp", auth.tolerance, now)
    key = standard_webhooks_key(auth.secret)
    signed = header_bytes(f"{message_id}.{str(stamp).strip()}.") + body
    expected = base64.b64encode(_hmac(key, signed))
    matched = False
    for entry in headers.get("webhook-signature", "").split():
        version, _, value = entry.partition(",")
        if version == "v1" and _same(header_bytes(value), expected):
            matched = True
    if not matched:
        raise Unauthorized("missing or invalid webhook-signature")
    return Verdict(_delivery_id(message_id))


class ReplayMemory:
    """Timestamped signatures accepted within their window (one trigger, this replica): a
    second request with one is a replay, refused without asking NATS. Bounded: past
    REPLAY_MEMORY the oldest are forgotten first. Replicas share no memory: on an async
    route the task id derived from the signature refuses a replay on any replica; on a sync
    route (no task to hold the id) this memory is all there is."""

    def __init__(self, limit: int = REPLAY_MEMORY) -> None:
        self.limit = limit
        self._expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def seen(self, key: str, now: float | None = None) -> bool:
        self._forget(time.time() if now is None else now)
        return key in self._expiry

    def remember(self, key: str, expires: float, now: float | None = None) -> None:
        self._forget(time.time() if now is None else now)
        while len(self._expiry) >= self.limit and self._heap:
            _, oldest = heapq.heappop(self._heap)
            self._expiry.pop(oldest, None)
        self._expiry[key] = expires
        heapq.heappush(self._heap, (expires, key))

    def _forget(self, now: float) -> None:
        while self._heap and self._heap[0][0] < now:
            _, key = heapq.heappop(self._heap)
            if self._expiry.get(key, now) < now:
                del self._expiry[key]

    def __len__(self) -> int:
        return len(self._expiry)
