"""/readyz waits for every trigger and shows each one's state; the file trigger's `filter:`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import Api, GatewayFactory, wait_until
from tests.services import Mosquitto, NatsServer
from tests.triggers.conftest import event_of, trigger_config, trigger_health, wait_tasks


async def readyz(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with http.get(f"{url}/readyz") as response:
        body: dict[str, Any] = await response.json()
        return response.status, body


async def test_readyz_holds_every_trigger_and_follows_a_broker_outage(
    nats_server: NatsServer,
    gateway_factory: GatewayFactory,
    http: aiohttp.ClientSession,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    fn = unique("ready")
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    try:
        inbox = tmp_path / "inbox"
        triggers: list[dict[str, Any]] = [
            {"name": f"{fn}-http", "type": "http", "path": f"/hooks/{fn}"},
            {"name": f"{fn}-timer", "type": "timer", "every": "1h"},
            {
                "name": f"{fn}-file",
                "type": "file",
                "path": str(inbox),
                "filter": {"data": {"path": [{"suffix": ".png"}]}},
            },
            {"name": f"{fn}-mqtt", "type": "mqtt", "url": broker.url, "topic": f"{fn}/#"},
            {"name": f"{fn}-nats", "type": "nats", "subject": f"{fn}.>"},
        ]
        gw = gateway_factory(trigger_config(nats_server.url, tmp_path / "data", fn, triggers))
        status, body = await readyz(http, gw.url)
        assert status == 200 and body["ready"] is True
        states = body["checks"]["triggers"]
        assert {name: (s["type"], s["ready"]) for name, s in states.items()} == {
            f"{fn}-http": ("http", True),
            f"{fn}-timer": ("timer", True),
            f"{fn}-file": ("file", True),
            f"{fn}-mqtt": ("mqtt", True),
            f"{fn}-nats": ("nats", True),
        }

        # Armed as soon as ready: a file written now fires (and the filter drops the other one).
        (inbox / "notes.txt").write_text("no")
        (inbox / "photo.png").write_bytes(b"\x89PNG")
        api = Api(http, gw.url)
        [task] = await wait_tasks(api, fn, 1)
        assert event_of(task)["data"]["path"] == "photo.png"

        async def dropped() -> bool:
            return bool((await trigger_health(api, f"{fn}-file"))["dropped"] == 1)

        await wait_until(dropped, timeout=10)

        broker.stop()

        async def unready() -> dict[str, Any] | None:
            status, body = await readyz(http, gw.url)
            return body if status == 503 else None

        body = await wait_until(unready, timeout=15)
        assert body["checks"]["triggers"][f"{fn}-mqtt"]["ready"] is False
        assert body["checks"]["triggers"][f"{fn}-nats"]["ready"] is True and body["checks"]["nats"] is True

        broker.start()

        async def ready_again() -> bool:
            return (await readyz(http, gw.url))[0] == 200

        await wait_until(ready_again, timeout=20)
    finally:
        broker.stop()
