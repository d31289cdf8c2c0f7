"""Streams, subjects and headers of flow control: one place, so leader and runners agree."""

from __future__ import annotations

import functools
import hashlib

from gateway.tasks.constants import FLOW_STREAM, LEADER_SUBJECT, LEADERS_STREAM, PARK_SUBJECT

__all__ = ["FLOW_STREAM", "LEADERS_STREAM", "LEADER_SUBJECT", "PARK_SUBJECT"]  # the streams' names: constants.py
# Core NATS, no stream: the leader's hand-over and the runners' reports.
RUN_SUBJECT = "fngate.flow.run"  # fngate.flow.run.{fn}.{replica}: admitted tasks, a batch (handover.py)
DONE_SUBJECT = "fngate.flow.done"  # fngate.flow.done.{fn}: grants that ended, space-separated
HOLD_SUBJECT = "fngate.flow.hold"  # fngate.flow.hold.{fn}: the grants a replica still runs
STATS_SUBJECT = "fngate.flow.stats"  # fngate.flow.stats.{fn}: the leader's waiting counts


@functools.lru_cache(maxsize=4096)  # the keys of a busy function repeat
def key_hash(key: str) -> str:
    """A subject token and consumer-name part for a key (keys may hold dots and slashes)."""
    return hashlib.blake2s(key.encode(), digest_size=8).hexdigest() if key else "_"


def run_subject(function: str, replica: str) -> str:
    return f"{RUN_SUBJECT}.{function}.{replica}"


def park_subject(function: str, rank: int, khash: str) -> str:
    return f"{PARK_SUBJECT}.{function}.{rank}.{khash or '_'}"


def park_consumer(function: str, rank: int, khash: str) -> str:
    return f"park-{function}-{rank}-{khash or '_'}"
