"""Operation records in the JetStream KV bucket `fngate_operations` (one key per operation).

Progress is counted per chunk by compare-and-set on the record, which lists the chunks it
has counted: a chunk redelivered after its replica died is acted on again (harmlessly, see
actions.py) but counted once.
"""

from __future__ import annotations

import json
import time
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import InvalidKeyError, KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue

from gateway.tasks.invocation import iso

from ..errors import NotFound, ServiceUnavailable

BUCKET = "fngate_operations"
KEEP = 7 * 86400.0  # seconds an operation record is kept
PUBLIC = ("operation_id", "kind", "filter", "status", "matched", "done", "failed", "started_at", "finished_at")


class OperationNotFound(NotFound):
    code = "OperationNotFound"


def public(record: dict[str, Any]) -> dict[str, Any]:
    return {k: record.get(k) for k in PUBLIC}


def new_record(op_id: str, kind: str, filt: dict[str, str], matched: int, chunks: int) -> dict[str, Any]:
    now = time.time()
    done = chunks == 0
    return {
        "operation_id": op_id,
        "kind": kind,
        "filter": filt,
        "status": "Succeeded" if done else "Running",
        "matched": matched,
        "done": 0,
        "failed": 0,
        "started_at": iso(now),
        "finished_at": iso(now) if done else None,
        "started": now,  # for ordering the list
        "chunks": chunks,
        "counted": [],
    }


class OperationRecords:
    def __init__(self, js: JetStreamContext, replicas: int = 1) -> None:
        self.js = js
        self.replicas = replicas
        self.kv: KeyValue | None = None

    async def open(self) -> None:
        config = KeyValueConfig(bucket=BUCKET, history=1, ttl=KEEP, storage=StorageType.FILE, replicas=self.replicas)
        self.kv = await self.js.create_key_value(config)

    def _kv(self) -> KeyValue:
        assert self.kv is not None, "operation records not opened"
        return self.kv

    async def create(self, record: dict[str, Any]) -> None:
        await self._kv().create(record["operation_id"], json.dumps(record).encode())

    async def get(self, op_id: str) -> dict[str, Any]:
        try:
            entry = await self._kv().get(op_id)
        except (KeyNotFoundError, KeyDeletedError, InvalidKeyError):
            raise OperationNotFound(f"operation {op_id!r} not found") from None
        except Exception as exc:
            raise ServiceUnavailable(f"operations cannot be read right now ({type(exc).__name__}); retry") from None
        if entry.value is None:
            raise OperationNotFound(f"operation {op_id!r} not found")
        value: dict[str, Any] = json.loads(entry.value)
        return value

    async def list(self) -> list[dict[str, Any]]:
        kv = self._kv()
        try:
            keys = await kv.keys()
        except NoKeysError:
            return []
        except Exception as exc:
            raise ServiceUnavailable(f"operations cannot be read right now ({type(exc).__name__}); retry") from None
        records = []
        for key in keys:
            try:
                records.append(await self.get(key))
            except OperationNotFound:  # expired between the listing and the read
                continue
        records.sort(key=lambda r: r.get("started", 0.0), reverse=True)
        return records

    async def count_chunk(self, op_id: str, chunk: int, done: int, failed: int) -> None:
        """Add one chunk's outcome to its operation, once (CAS, retried on a conflict)."""
        kv = self._kv()
        while True:
            entry = await kv.get(op_id)
            assert entry.value is not None
            record = json.loads(entry.value)
            if chunk in record["counted"]:
                return
            record["counted"].append(chunk)
            record["done"] += done
            record["failed"] += failed
            if len(record["counted"]) >= record["chunks"]:
                record["status"] = "Failed" if record["failed"] else "Succeeded"
                record["finished_at"] = iso(time.time())
            try:
                await kv.update(op_id, json.dumps(record).encode(), last=entry.revision)
                return
            except KeyWrongLastSequenceError:
                continue
