"""Parsing of the human units the config accepts: durations and sizes."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_FACTORS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB)?\s*$")
_SIZE_FACTORS = {
    None: 1,
    "B": 1,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
}


def parse_duration(value: object) -> float:
    """Seconds from `500ms`, `30s`, `5m`, `1h`, `7d` or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError("must be a duration such as 500ms, 30s, 5m, 1h, 7d")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("must not be negative")
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _DURATION_FACTORS[match.group(2)]
    raise ValueError(f"must be a duration such as 500ms, 30s, 5m, 1h, 7d (got {value!r})")


def parse_size(value: object) -> int:
    """Bytes from `64KiB`, `1MiB` or a plain number of bytes."""
    if isinstance(value, bool):
        raise ValueError("must be a size such as 64KiB or 1MiB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match:
            return int(match.group(1)) * _SIZE_FACTORS[match.group(2)]
    raise ValueError(f"must be a size such as 64KiB, 1MiB or a number of bytes (got {value!r})")


def format_size(size: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size} bytes"
