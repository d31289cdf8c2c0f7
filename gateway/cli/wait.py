"""`fngate invoke FN --async --wait`: follow a submitted task to its end by long-polls."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Protocol

from gateway.tasks.status import TaskStatus

EXIT_SUCCEEDED = 0
EXIT_OTHER_TERMINAL = 1
EXIT_TIMEOUT = 3
MAX_POLL = 60.0  # the API's longest ?wait=
RETRY_PAUSE = 1.0


class Client(Protocol):
    def call(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]: ...


def wait_for_end(client: Client, task_id: str, timeout: float | None) -> int:
    """Print the final record; exit 0 on Succeeded, 1 on another terminal status, 3 on timeout."""
    deadline = None if timeout is None else time.monotonic() + timeout
    record: dict[str, Any] | None = None
    while True:
        left = MAX_POLL if deadline is None else min(MAX_POLL, max(0.0, deadline - time.monotonic()))
        status, _, body = client.call("GET", f"/v1/tasks/{task_id}?wait={left:.3f}")
        if status == 200:
            record = json.loads(body)
            if TaskStatus(record["status"]).terminal:
                print(json.dumps(record, indent=2))
                return EXIT_SUCCEEDED if record["status"] == TaskStatus.SUCCEEDED else EXIT_OTHER_TERMINAL
        elif status < 500:  # not found, forbidden: waiting longer will not help
            print(body.decode(errors="replace"), file=sys.stderr)
            return EXIT_OTHER_TERMINAL
        else:  # the gateway or NATS is away for a moment: keep waiting until the deadline
            time.sleep(RETRY_PAUSE if deadline is None else min(RETRY_PAUSE, max(0.0, deadline - time.monotonic())))
        if deadline is not None and time.monotonic() >= deadline:
            if record is not None:
                print(json.dumps(record, indent=2))
            state = record["status"] if record else "unknown"
            print(f"fngate: task {task_id} still {state} after {timeout:g}s", file=sys.stderr)
            return EXIT_TIMEOUT
