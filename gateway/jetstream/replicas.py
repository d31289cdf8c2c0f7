"""Which functions the live replicas serve, so that no replica declares a function gone
while another one still runs it.

Every replica announces its function set in the KV bucket `fngate_replicas` (key: its
replica id, value: the JSON list of its function names) at start-up and then every BEAT
seconds; the bucket's TTL drops the entry of a replica that stopped beating (crashed), and
a replica that shuts down deletes its own. A function is gone, and its queued tasks may end
`Invalid`, only when no live replica's entry names it, and only once the asking replica has
been up for a whole TTL (so every live replica has announced itself since).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import socket
import time
from collections.abc import Iterable

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import NoKeysError
from nats.js.kv import KeyValue

from gateway.supervise import cancel_requested

log = logging.getLogger(__name__)
BUCKET = "fngate_replicas"
BEAT = 5.0  # seconds between announcements
TTL = 3 * BEAT  # an entry not renewed for this long belongs to a replica that is gone


def replica_id() -> str:
    host = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40]
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


class ReplicaRegistry:
    def __init__(self, js: JetStreamContext, functions: Iterable[str], replicas: int = 1) -> None:
        self.js = js
        self.id = replica_id()
        self.functions = sorted(functions)
        self.replicas = replicas
        self.kv: KeyValue | None = None
        self.started = time.monotonic()
        self._lock = asyncio.Lock()
        self._others: frozenset[str] = frozenset()
        self._read_at = -BEAT

    async def start(self) -> None:
        config = KeyValueConfig(bucket=BUCKET, ttl=TTL, history=1, storage=StorageType.FILE, replicas=self.replicas)
        self.kv = await self.js.create_key_value(config)
        self.started = time.monotonic()
        await self.announce()

    async def announce(self) -> None:
        assert self.kv is not None
        await self.kv.put(self.id, json.dumps(self.functions).encode())

    async def run(self) -> None:
        while not cancel_requested():
            await asyncio.sleep(BEAT)
            try:
                await self.announce()
            except Exception as exc:  # NATS away for a moment: the next beat tries again
                log.warning("could not announce this replica's functions: %s", exc)

    async def close(self) -> None:
        if self.kv is not None:
            with contextlib.suppress(Exception):
                await self.kv.delete(self.id)

    def settled(self) -> bool:
        """Up for a whole TTL: every replica alive now has announced itself since."""
        return time.monotonic() - self.started >= TTL

    async def served_elsewhere(self, function: str) -> bool:
        """True when another live replica's config has `function`."""
        return function in await self._served_elsewhere()

    async def _served_elsewhere(self) -> frozenset[str]:
        """Functions the other live replicas serve; read at most once per half beat, however
        many functions ask (each invalidator asks every beat)."""
        async with self._lock:
            if time.monotonic() - self._read_at >= BEAT / 2:
                self._others = await self._read_others()
                self._read_at = time.monotonic()
            return self._others

    async def _read_others(self) -> frozenset[str]:
        assert self.kv is not None
        try:
            keys = await self.kv.keys()
        except NoKeysError:
            return frozenset()
        served: set[str] = set()
        for key in keys:
            if key == self.id:
                continue
            with contextlib.suppress(Exception):
                entry = await self.kv.get(key)
                served.update(json.loads(entry.value or b"[]"))
        return frozenset(served)
