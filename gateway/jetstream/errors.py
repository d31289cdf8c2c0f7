"""What JetStream's API errors mean to fngate: the error codes it acts on, in one place.

Every module that inspects an APIError asks these helpers rather than comparing numbers.
"""

from __future__ import annotations

from enum import IntEnum

from nats.js.errors import APIError, NotFoundError


class JsCode(IntEnum):
    """JetStream API error codes (`err_code`) fngate acts on."""

    INSUFFICIENT_RESOURCES = 10023  # the server's JetStream store (or a limit) is full
    NO_MESSAGE = 10037
    STREAM_NAME_IN_USE = 10058  # a stream of that name exists with another config
    STREAM_NOT_FOUND = 10059
    WRONG_LAST_SEQUENCE = 10071  # a compare-and-set lost: the subject moved on


def wrong_last_sequence(exc: APIError) -> bool:
    """A write expecting a subject's last sequence found another one there."""
    return exc.err_code == JsCode.WRONG_LAST_SEQUENCE


def stream_name_in_use(exc: APIError) -> bool:
    """add_stream found a stream of that name with another config (then update it)."""
    return exc.err_code == JsCode.STREAM_NAME_IN_USE


def store_full(exc: APIError) -> bool:
    """JetStream refused a write for want of room (its store, or a limit)."""
    return exc.err_code == JsCode.INSUFFICIENT_RESOURCES


def not_found(exc: APIError) -> bool:
    """A get found no such message (or stream): an answer, not a failure."""
    return isinstance(exc, NotFoundError) or exc.code == 404


def refused_for_good(exc: APIError) -> bool:
    """A 4xx: the request itself was refused, and sending it again cannot help."""
    return exc.code is not None and 400 <= exc.code < 500
