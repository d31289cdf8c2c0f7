"""Raw deliveries: a subscription's messages straight from nats-py's parser.

A message the library delivers costs a `Msg` built, a queue put and get, and a callback
coroutine awaited. Where that is most of the work per message (the history feed's pull
deliveries, the ack publisher's acks), a handler registered for a subscription id gets the
subject, the reply subject, the payload and the raw header block, synchronously, from the
parser. Every other subscription of the connection goes the library's way.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client as NATS

log = logging.getLogger(__name__)
RawHandler = Callable[[bytes, bytes, bytes, bytes | None], None]
RAW_ATTR = "_fngate_raw_handlers"
STATUS_PREFIX = b"NATS/1.0 "  # a status line (`NATS/1.0 503`, 404, 408, 409, 100), not headers


def raw_handlers(nc: NATS) -> dict[int, RawHandler] | None:
    """The connection's handlers by subscription id, if `install_raw` could hook it."""
    found: dict[int, RawHandler] | None = getattr(nc, RAW_ATTR, None)
    return found


def install_raw(nc: NATS) -> dict[int, RawHandler] | None:
    """Hook the connection's deliveries (an internal of nats-py; left alone when absent).
    Once per connection: a second call returns the handlers of the first."""
    installed = raw_handlers(nc)
    if installed is not None:
        return installed
    original: Callable[..., Awaitable[None]] | None = getattr(nc, "_process_msg", None)
    if original is None:
        log.info("nats-py has no _process_msg: messages are taken the library's way")
        return None
    handlers: dict[int, RawHandler] = {}

    async def process_msg(sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        handler = handlers.get(sid)
        if handler is None:
            await original(sid, subject, reply, data, headers)
            return
        handler(subject, reply, data, headers)

    nc_any: Any = nc
    nc_any._process_msg = process_msg
    setattr(nc, RAW_ATTR, handlers)
    return handlers


def is_status(block: bytes | None) -> bool:
    """A status delivery (`NATS/1.0 404 No Messages`, 408, 409, 100, 503), not a message."""
    return block is not None and block.startswith(STATUS_PREFIX)
