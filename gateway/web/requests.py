"""What an invoke request carries into an invocation, read and checked before anything is
stored: the body (bounded in size and in time; every route that takes a body reads it
here), and every header that ends up in the invocation's headers (X-Delay, the chain,
Content-Type). A value that fails here is a 400 naming the header; nothing malformed
reaches the task stream, where one bad message would break every reader of it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from gateway.config.model import MAX_DELAY
from gateway.errors import BadRequest, FngateError, PayloadTooLarge
from gateway.tasks import constants as c
from gateway.tasks.invocation import CHAIN_ID, MAX_CHAIN_DEPTH_VALUE, Lineage, lineage_from_headers
from gateway.units import format_size

# Headers that only mean something for an async invocation: on a sync one they would be
# silently ignored (a task id that then names nothing), so they are refused.
ASYNC_ONLY_HEADERS = ("X-Task-Id", "X-Delay", "X-Priority", "X-Concurrency-Key")
# Plain decimal seconds in ASCII: float() would also take `1_000`, `١٢`, `inf` and `1e3`.
_DELAY = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
_CONTENT_TYPE = re.compile(r"[\x20-\x7e]{1,256}")
_DEPTH = re.compile(r"[0-9]{1,6}")


class ClientGone(FngateError):
    """The client closed its connection before its request body arrived: nobody to answer."""

    status = 400
    code = "ClientGone"


class RequestTimeout(FngateError):
    status = 408
    code = "RequestTimeout"


def check_sync_headers(headers: Mapping[str, str]) -> None:
    for name in ASYNC_ONLY_HEADERS:
        if name in headers:
            raise BadRequest(f"{name} applies to async invocations only (send X-Invocation-Type: async)")


def parse_delay(value: str | None) -> float:
    """X-Delay as a number; its range is the service's to check (TaskService.invocation)."""
    if value is None:
        return 0.0
    text = value.strip()
    if not _DELAY.fullmatch(text):
        raise BadRequest(f"X-Delay must be a number of seconds 0..{MAX_DELAY:g} (digits and an optional decimal point)")
    return float(text)


def check_content_type(value: str) -> str:
    if not _CONTENT_TYPE.fullmatch(value):
        raise BadRequest("Content-Type must be 1..256 printable ASCII characters")
    return value


def request_lineage(headers: Mapping[str, str]) -> Lineage | None:
    """The chain an API caller passes on (Fngate-Chain-Id, Fngate-Chain-Depth), advanced by
    one hop, with its trace context; None when it passes neither. Malformed values are a 400 naming the header."""
    chain_id = headers.get(c.H_CHAIN_ID)
    depth_text = headers.get(c.H_CHAIN_DEPTH)
    if depth_text is not None and not _DEPTH.fullmatch(depth_text.strip()):
        raise BadRequest(f"{c.H_CHAIN_DEPTH} must be an integer 0..{MAX_CHAIN_DEPTH_VALUE}")
    if chain_id is not None and not CHAIN_ID.fullmatch(chain_id):
        raise BadRequest(f"{c.H_CHAIN_ID} must be 1..64 of [A-Za-z0-9._:-]")
    if depth_text is not None and int(depth_text) > MAX_CHAIN_DEPTH_VALUE:
        raise BadRequest(f"{c.H_CHAIN_DEPTH} must be an integer 0..{MAX_CHAIN_DEPTH_VALUE}")
    # Valid: the same reading as a trigger's, which also carries the trace context on.
    return lineage_from_headers(headers)


async def read_body(request: web.Request, limit: int, timeout: float) -> bytes:
    """The whole body, within `limit` bytes and `timeout` seconds: a slow upload does not hold
    a connection for ever (408), and one the client abandons ends quietly (ClientGone). Every
    route that takes a body reads it here (the invoke route, the http triggers' webhook routes
    through TriggerContext.read_body, the bulk routes). It is read in chunks and refused as soon
    as it passes `limit`: also a body without a Content-Length, and a trigger's `max_body` above
    `api.max_request_body` (aiohttp's own read would hold every route to the latter)."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(
            f"request body of {request.content_length} bytes is over the limit of {format_size(limit)}"
        )
    content = request.content
    try:
        if content.is_eof():
            # The whole body arrived with its headers (nearly every small request): no
            # timer and no chunk iteration, the one hot path's share of both.
            body = content.read_nowait(-1)
            if len(body) > limit:
                raise PayloadTooLarge(f"request body over the limit of {format_size(limit)}")
            return body
    except (ConnectionError, asyncio.IncompleteReadError) as exc:
        raise ClientGone(str(exc)) from None
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in content.iter_chunked(64 * 1024):
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"request body over the limit of {format_size(limit)}")
                chunks.append(chunk)
    except TimeoutError:
        # aiohttp closes the connection after the answer, as the body was not read to its end.
        raise RequestTimeout(f"request body not received within {timeout:g}s") from None
    except (ConnectionError, asyncio.IncompleteReadError) as exc:
        raise ClientGone(str(exc)) from None
    return b"".join(chunks)


def body_reader(timeout: float) -> Callable[[web.Request, int], Awaitable[bytes]]:
    """read_body under the API's `body_read_timeout`, for a route that sets its own size limit
    (an http trigger's `max_body`): the triggers get it in their context, as they may not
    import the web room."""

    async def read(request: web.Request, limit: int) -> bytes:
        return await read_body(request, limit, timeout)

    return read
