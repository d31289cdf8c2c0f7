"""Lean header parsing for the feed's own NATS connection.

nats-py parses every header block line by line and checks each name character by character;
a submission's headers-only delivery carries four headers (~80 characters of names), and in
a backfill that was over half of the feed's CPU. The feed needs only the invocation header,
so on its connection, which serves nothing else, plain header blocks are split here;
status lines (`NATS/1.0 404 …`, `100 Idle Heartbeat`) still go to the library.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client as NATS

from gateway.jetstream.raw import install_raw, is_status

log = logging.getLogger(__name__)
PREFIX = b"NATS/1.0"
CRLF = b"\r\n"


def install(nc: NATS) -> None:
    """Replace the connection's header parser and hook its deliveries (internals of nats-py;
    left alone when absent)."""
    install_raw(nc)
    original: Callable[[bytes], Awaitable[dict[str, str] | None]] | None = getattr(nc, "_process_headers", None)
    if original is None:
        log.info("task index: nats-py has no _process_headers; the feed parses headers the library's way")
        return

    async def process_headers(headers: bytes) -> dict[str, str] | None:
        if not headers:
            return None
        if not headers.startswith(PREFIX) or is_status(headers):
            return await original(headers)  # a status line, or something unexpected
        out: dict[str, str] = {}
        for line in headers[len(PREFIX) :].split(CRLF):
            name, sep, value = line.partition(b":")
            if sep:
                out[name.strip().decode("ascii", "replace")] = value.strip().decode("utf-8", "replace")
        return out or None

    nc_any: Any = nc
    nc_any._process_headers = process_headers


def header(block: bytes | dict[str, str] | None, name: str) -> str | None:
    """One header's value from a raw block (`NATS/1.0\\r\\nName: value\\r\\n…`) or a parsed one."""
    if block is None:
        return None
    if isinstance(block, dict):
        return block.get(name)
    key = b"\r\n" + name.encode() + b":"
    at = block.find(key)
    if at < 0:
        return None
    start = at + len(key)
    end = block.find(CRLF, start)
    return block[start : end if end >= 0 else len(block)].strip().decode("utf-8", "replace")
