"""Many admitted tasks in one core NATS message, from the flow leader to one runner.

One message per task cost both sides nats-py's whole per-message path (and the server a
routing), which was most of what flow control added per task with two replicas. A batch is
a payload of records, each

    "{reply} {subject} {grant or -} {key hash or -} {header bytes} {data bytes}\\n"
    header lines "name: value\\r\\n" ... then the data

where `reply` is the JetStream reply subject of the leader's delivery (the runner acks it)
and `subject` the task's subject. Lengths, not separators, delimit the data: a payload
may hold any bytes. Header values cannot hold CR or LF (NATS refuses them), so the lines
need no escaping.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(slots=True)
class Handed:
    reply: str
    subject: str
    grant: str  # "" for a task sent on without a grant (not due yet, or expired)
    khash: str
    headers: dict[str, str]
    data: bytes


def encode(tasks: list[Handed]) -> bytes:
    parts: list[bytes] = []
    for task in tasks:
        head = "".join(f"{name}: {value}\r\n" for name, value in task.headers.items()).encode()
        line = f"{task.reply} {task.subject} {task.grant or '-'} {task.khash or '-'} {len(head)} {len(task.data)}\n"
        parts += (line.encode(), head, task.data)
    return b"".join(parts)


def decode(payload: bytes) -> Iterator[Handed]:
    """The records of a batch; ValueError on a malformed one (what came before it is kept)."""
    view = memoryview(payload)
    at, end = 0, len(payload)
    while at < end:
        newline = payload.index(b"\n", at)
        reply, subject, grant, khash, head_len, data_len = payload[at:newline].decode().split(" ")
        at = newline + 1
        head = bytes(view[at : at + int(head_len)]).decode()
        at += int(head_len)
        data = bytes(view[at : at + int(data_len)])
        at += int(data_len)
        if at > end:
            raise ValueError("truncated hand-over record")
        headers = {}
        for line in head.split("\r\n"):
            if line:
                name, _, value = line.partition(": ")
                headers[name] = value
        yield Handed(reply, subject, "" if grant == "-" else grant, "" if khash == "-" else khash, headers, data)
