"""The webhook schemes on their own, against signatures made the way each sender makes them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from multidict import CIMultiDict
from pydantic import TypeAdapter, ValidationError
from standardwebhooks.webhooks import Webhook

from gateway.errors import Unauthorized
from triggers.webhook_auth import Auth, AuthOptions, ReplayMemory, Verdict, verify

NOW = 1_800_000_000.0
BODY = json.dumps({"id": "evt_1NfG8", "type": "invoice.paid"}).encode()
WHSEC = "whsec_" + base64.b64encode(b"standard-webhooks-key-0123456789").decode()


def auth(**options: Any) -> AuthOptions:
    parsed: AuthOptions = TypeAdapter(Auth).validate_python(options)
    return parsed


def check(options: AuthOptions, headers: dict[str, str], body: bytes = BODY, now: float = NOW) -> Verdict:
    return verify(options, CIMultiDict(headers), body, now)


def hexmac(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def test_github() -> None:
    options = auth(type="github", secret="gh-secret")
    good = {"X-Hub-Signature-256": "sha256=" + hexmac("gh-secret", BODY), "X-GitHub-Delivery": "72d3162e-cc78"}
    assert check(options, good) == Verdict(delivery_id="72d3162e-cc78")
    for bad in ({**good, "X-Hub-Signature-256": "sha256=" + hexmac("other", BODY)}, {"X-GitHub-Delivery": "x"}):
        with pytest.raises(Unauthorized):
            check(options, bad)


def stripe_header(secret: str, stamp: int, body: bytes, *extra: str) -> str:
    # https://docs.stripe.com/webhooks#verify-manually: HMAC-SHA256 of "t.body", hex, as v1
    return ",".join([f"t={stamp}", f"v1={hexmac(secret, f'{stamp}.'.encode() + body)}", *extra])


def test_stripe() -> None:
    options = auth(type="stripe", secret="whsec_stripe")
    stamp = int(NOW) - 30
    header = stripe_header("whsec_stripe", stamp, BODY, "v0=ignored")
    assert check(options, {"Stripe-Signature": header}) == Verdict(delivery_id="evt_1NfG8")
    # a secret being rolled: two v1 signatures, one of them good
    rolled = f"t={stamp},v1={'0' * 64},v1={hexmac('whsec_stripe', f'{stamp}.'.encode() + BODY)}"
    assert check(options, {"Stripe-Signature": rolled}).delivery_id == "evt_1NfG8"
    stale = stripe_header("whsec_stripe", int(NOW) - 301, BODY)
    for bad in (stale, stripe_header("other", stamp, BODY), f"t={stamp}", "v1=abc", ""):
        with pytest.raises(Unauthorized):
            check(options, {"Stripe-Signature": bad})


def slack_headers(secret: str, stamp: str, body: bytes) -> dict[str, str]:
    # https://api.slack.com/authentication/verifying-requests-from-slack: v0=HMAC("v0:ts:body")
    return {
        "X-Slack-Request-Timestamp": stamp,
        "X-Slack-Signature": "v0=" + hexmac(secret, f"v0:{stamp}:".encode() + body),
    }


def test_slack() -> None:
    options = auth(type="slack", secret="slack-signing")
    stamp = str(int(NOW))
    body = b'{"type":"event_callback","event_id":"Ev08MFMKH6"}'
    assert check(options, slack_headers("slack-signing", stamp, body), body).delivery_id == "Ev08MFMKH6"
    # a slash command (form body) names no event: its signature guards against a replay
    form = b"command=%2Fdeploy&text=prod"
    verdict = check(options, slack_headers("slack-signing", stamp, form), form)
    assert verdict.delivery_id is None and verdict.replay_key and verdict.expires == NOW + 300
    for bad in (slack_headers("other", stamp, body), slack_headers("slack-signing", str(int(NOW) - 400), body)):
        with pytest.raises(Unauthorized):
            check(options, bad, body)


def test_standard_webhooks_with_the_reference_library() -> None:
    options = auth(type="standard-webhooks", secret=WHSEC)
    sender = Webhook(WHSEC)
    sent = datetime.fromtimestamp(NOW - 10, UTC)
    signature = sender.sign("msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", sent, BODY.decode())
    headers = {
        "webhook-id": "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
        "webhook-timestamp": str(int(sent.timestamp())),
        "webhook-signature": f"v1,{'A' * 44} {signature}",
    }
    assert check(options, headers) == Verdict(delivery_id="msg_2KWPBgLlAfxdpx2AI54pPJ85f4W")
    for bad in (
        {**headers, "webhook-id": "msg_other"},
        {**headers, "webhook-timestamp": str(int(NOW) - 400)},
        {**headers, "webhook-signature": signature.replace("v1,", "v2,")},
    ):
        with pytest.raises(Unauthorized):
            check(options, bad)
    with pytest.raises(ValidationError):
        auth(type="standard-webhooks", secret="whsec_***")


@pytest.mark.parametrize("stamp", ["nan", "NaN", "inf", "-inf", "1e9", "-5", " ", "", "0x10", "1800000000.5.5"])
def test_generic_refuses_timestamps_that_are_not_plain_numbers(stamp: str) -> None:
    options = auth(type="hmac-sha256", secret="s", header="X-Sig", timestamp_header="X-Ts")
    headers = {"X-Ts": stamp, "X-Sig": "sha256=" + hexmac("s", stamp.encode() + b"." + BODY)}
    with pytest.raises(Unauthorized, match="X-Ts"):
        check(options, headers)


def test_generic_names_the_request_by_its_signature() -> None:
    """With a timestamp, the signature is remembered until the window closes; without one,
    it still names the request (the trigger derives the task id from it), unbounded in time."""
    options = auth(type="hmac-sha256", secret="s", header="X-Sig", timestamp_header="X-Ts", tolerance="60s")
    stamp = f"{NOW - 5:.3f}"
    signature = "sha256=" + hexmac("s", stamp.encode() + b"." + BODY)
    verdict = check(options, {"X-Ts": stamp, "X-Sig": signature})
    assert verdict.replay_key == signature and verdict.expires == pytest.approx(NOW + 55)
    without = auth(type="hmac-sha256", secret="s", header="X-Sig")
    plain = "sha256=" + hexmac("s", BODY)
    assert check(without, {"X-Sig": plain.upper().replace("SHA256=", "sha256=")}) == Verdict(replay_key=plain)


def test_replay_memory_forgets_after_the_window_and_stays_bounded() -> None:
    memory = ReplayMemory(limit=3)
    memory.remember("a", expires=NOW + 10, now=NOW)
    assert memory.seen("a", now=NOW + 9) and not memory.seen("a", now=NOW + 11)
    for key in "bcde":
        memory.remember(key, expires=NOW + 100, now=NOW)
    assert len(memory) == 3 and not memory.seen("b", now=NOW) and memory.seen("e", now=NOW)


def test_bearer() -> None:
    options = auth(type="bearer", token="token-12345678")
    assert check(options, {"Authorization": "Bearer token-12345678"}) == Verdict()
    for header in ("Bearer token-1234567", "token-12345678", "Basic dG9rZW4="):
        with pytest.raises(Unauthorized):
            check(options, {"Authorization": header})
