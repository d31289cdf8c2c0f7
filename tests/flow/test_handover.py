"""The batch format of the flow leader's hand-over: what goes in comes out, any bytes."""

from __future__ import annotations

import pytest

from gateway.flow import handover
from gateway.flow.handover import Handed


def test_batch_round_trip_with_binary_payloads_and_empty_fields() -> None:
    tasks = [
        Handed("$JS.ACK.S.c.1.2.3.4.0", "fngate.tasks.f.t-1", "g-1", "ab12", {"Fngate-Invocation": "1|t-1|f"}, b"{}"),
        Handed("$JS.ACK.S.c.1.3.4.5.0", "fngate.tasks.f.t.2", "", "", {}, b"\n\r\n 1 2 3\x00\xff" * 50),
        Handed("r", "s", "g-2", "k", {"a": "b: c", "traceparent": "00-x-y-01"}, b""),
    ]
    assert list(handover.decode(handover.encode(tasks))) == tasks
    assert list(handover.decode(b"")) == []


def test_truncated_batch_is_refused() -> None:
    payload = handover.encode([Handed("r", "s", "g", "k", {"h": "v"}, b"0123456789")])
    with pytest.raises(ValueError):
        list(handover.decode(payload[:-3]))
