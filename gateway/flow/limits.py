"""The values of flow control: rate limits, concurrency keys, priorities; and a token bucket.

Pure functions and one small class, shared by the config check, the API and the flow leader.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PRIORITIES = ("high", "normal", "low")  # index = rank: 0 starts first
KEY_PATTERN = re.compile(r"^[A-Za-z0-9._:@/-]{1,128}$")
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|m|h)\s*$")
_PERIOD = {"s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True, slots=True)
class Rate:
    count: float
    period: float  # seconds

    @property
    def per_second(self) -> float:
        return self.count / self.period

    def __str__(self) -> str:
        unit = next(u for u, p in _PERIOD.items() if p == self.period)
        return f"{self.count:g}/{unit}"


def parse_rate(text: str) -> Rate:
    """`100/s`, `30/m`, `1000/h`."""
    match = _RATE.match(text)
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"must be a positive number of starts per s, m or h, like 100/s (got {text!r})")
    return Rate(float(match.group(1)), _PERIOD[match.group(2)])


def check_key(key: str) -> str:
    if not KEY_PATTERN.match(key):
        raise ValueError("concurrency key must be 1..128 of [A-Za-z0-9._:@/-]")
    return key


def check_priority(value: str) -> str:
    priority = value.strip().lower()
    if priority not in PRIORITIES:
        raise ValueError("priority must be high, normal or low")
    return priority


class TokenBucket:
    """Starts allowed by a rate: refills continuously, holds at most a tenth of the limit's
    count (at least one), so starts are spread over the period rather than bunched at its
    beginning, and any window of the period sees at most about 1.1 x the count."""

    def __init__(self, rate: Rate, now: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate.count / 10)
        self.tokens = self.capacity
        self.at = now

    def _refill(self, now: float) -> None:
        if now > self.at:
            self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate.per_second)
            self.at = now

    def take(self, now: float) -> bool:
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def available(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= 1.0

    def wait(self, now: float) -> float:
        """Seconds until the next token."""
        self._refill(now)
        return max(0.0, (1.0 - self.tokens) / self.rate.per_second)
