"""The MQTT broker restarted under load: nothing accepted is lost."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from tests.conftest import TERMINAL, Api, GatewayFactory, wait_until
from tests.services import Mosquitto, NatsServer
from tests.triggers.conftest import event_of, trigger_config, trigger_health

# mosquitto's default max_inflight_messages: QoS 1 messages sent to a client and not yet acknowledged
BROKER_INFLIGHT = 20


async def all_tasks(api: Api, function: str) -> list[dict[str, Any]]:
    """Every task of `function`, through all pages."""
    tasks: list[dict[str, Any]] = []
    cursor = ""
    while True:
        status, body = await api.get(f"/v1/tasks?function={function}&limit=1000{cursor}")
        assert status == 200, body
        tasks.extend(body["tasks"])
        if not body["next_cursor"]:
            return tasks
        cursor = f"&cursor={body['next_cursor']}"


@dataclass
class MqttLoad:
    """A QoS 1 publisher sending {"seq": n} one at a time; n moves on only once its PUBACK arrived.

    Runs in a thread. A message whose PUBACK has not arrived stays in paho's outgoing queue and is
    sent again (same seq, DUP flag) on every reconnect, so through an outage the publisher keeps
    retrying the same seq until the broker accepts it.
    """

    port: int
    topic: str
    client_id: str
    acked: dict[int, int] = field(default_factory=dict)  # seq -> broker life in which its PUBACK arrived
    ack_times: list[float] = field(default_factory=list)  # monotonic time of each PUBACK, in seq order
    life: int = 0  # bumped by the test when it restarts the broker
    disconnects: int = 0
    no_subscribers: int = 0  # PUBACKs saying nobody was subscribed: such a message went nowhere
    refused: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        done = threading.Condition()
        pubacks: dict[int, ReasonCode] = {}

        def on_publish(_c: paho.Client, _u: Any, mid: int, reason: ReasonCode, _p: Any) -> None:
            with done:
                pubacks[mid] = reason
                done.notify_all()

        def on_disconnect(_c: paho.Client, _u: Any, _f: Any, _r: Any, _p: Any) -> None:
            self.disconnects += 1

        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=paho.MQTTv5)
        client.reconnect_delay_set(min_delay=1, max_delay=1)
        client.on_publish = on_publish
        client.on_disconnect = on_disconnect
        client.connect_async("127.0.0.1", self.port)
        client.loop_start()
        try:
            seq = 0
            while not self.stop.is_set():
                info = client.publish(self.topic, json.dumps({"seq": seq}).encode(), qos=1)
                with done:
                    while info.mid not in pubacks and not self.stop.is_set():
                        done.wait(0.1)
                    reason = pubacks.pop(info.mid, None)
                if reason is None:
                    return  # stopped while this one was still unacknowledged: it does not count
                if reason.is_failure:
                    self.refused += 1  # not accepted: the same seq again
                    time.sleep(0.05)
                    continue
                if reason.value == 0x10:  # "No matching subscribers": accepted, but delivered to no one
                    self.no_subscribers += 1
                self.acked[seq] = self.life
                self.ack_times.append(time.monotonic())
                seq += 1
                time.sleep(0.004)
        finally:
            client.disconnect()
            client.loop_stop()

    def acked_in(self, life: int) -> list[int]:
        return sorted(seq for seq, in_life in self.acked.items() if in_life == life)


async def test_mqtt_broker_restarted_under_load_loses_nothing_accepted(
    nats_server: NatsServer,
    gateway_factory: GatewayFactory,
    http: aiohttp.ClientSession,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    """Mosquitto (persistent store) is restarted while a publisher sends and the trigger consumes.

    The trigger holds a persistent session (clean_session: false, fixed client_id), so the broker
    keeps its subscription and queues messages for it while it is away, in its store across the
    restart. The promise: every message the broker acknowledged to the publisher, before or after
    the restart, becomes a Succeeded task.
    """
    broker = Mosquitto(tmp_path / "mosquitto", persistent=True)
    broker.start()
    fn = unique("mbounce")
    topic = unique("bounce") + "/in"
    trigger = {
        "name": fn,
        "type": "mqtt",
        "url": broker.url,
        "topic": topic,
        "qos": 1,
        "clean_session": False,
        "client_id": f"fngate-{fn}",
    }
    load = MqttLoad(broker.port, topic, f"pub-{fn}")
    sender: asyncio.Future[None] | None = None
    began = time.monotonic()
    try:
        gw = gateway_factory(trigger_config(nats_server.url, tmp_path / "data", fn, [trigger]))
        api = Api(http, gw.url)

        async def subscribed() -> bool:
            return bool((await trigger_health(api, fn))["state"] == "running")

        await wait_until(subscribed, timeout=15)  # before that, a message would have no subscriber
        sender = asyncio.ensure_future(asyncio.to_thread(load.run))

        async def consuming() -> int:
            invocations: int = (await trigger_health(api, fn))["invocations"]
            return invocations if invocations >= 150 else 0

        await wait_until(consuming, timeout=20)
        # The echo function keeps up with the publisher, so the broker would hold next to nothing
        # for the trigger when it stops. Freezing the gateway for a moment first makes it hold a
        # backlog: a window of messages sent to the trigger but not acknowledged, and more queued
        # behind them, all of which must survive the restart in the broker's store.
        invoked_before_stop = (await trigger_health(api, fn))["invocations"]
        gw.freeze()
        frozen_at_acks = len(load.acked)
        try:
            # Until the broker holds well over one in-flight window for the frozen trigger:
            # the publisher's acks since the freeze, not a guessed pause, say so.
            async def backlog() -> bool:
                return len(load.acked) - frozen_at_acks > 2 * BROKER_INFLIGHT

            await wait_until(backlog, timeout=15)
            stopped_at = time.monotonic()
            broker.stop()  # SIGTERM: mosquitto writes its store (sessions, queued and in-flight messages)
            stop_took = time.monotonic() - stopped_at
        finally:
            gw.thaw()
        assert (broker.workdir / "mosquitto.db").exists(), broker.log()[-2000:]
        await asyncio.sleep(2.0)  # the outage; the publisher keeps retrying the same seq through it
        load.life = 1
        broker.start()  # the same port, the same store
        outage = time.monotonic() - stopped_at
        trigger_back: float | None = None

        async def resumed() -> bool:
            nonlocal trigger_back
            health = await trigger_health(api, fn)
            if trigger_back is None and health["connected"] and health["state"] == "running":
                trigger_back = time.monotonic() - stopped_at
            return trigger_back is not None and len(load.acked_in(1)) >= 150

        await wait_until(resumed, timeout=25)
        load.stop.set()
        await sender
        before, after = load.acked_in(0), load.acked_in(1)
        # More than the in-flight window crossed the restart: queued messages too, not only in-flight ones.
        held = len(before) - invoked_before_stop
        assert held > BROKER_INFLIGHT, held
        publisher_back = load.ack_times[len(before)] - stopped_at
        tasks: list[dict[str, Any]] = []
        acked = set(load.acked)

        async def settled() -> bool:
            nonlocal tasks
            tasks = await all_tasks(api, fn)
            seen = {event_of(t)["data"]["seq"] for t in tasks if t["status"] == "Succeeded"}
            return acked <= seen and all(t["status"] in TERMINAL for t in tasks)

        try:
            await wait_until(settled, timeout=20, interval=0.5)
        except AssertionError:
            seen = {event_of(t)["data"]["seq"] for t in tasks if t["status"] == "Succeeded"}
            missing = sorted(acked - seen)
            raise AssertionError(
                f"{len(missing)} acked messages have no Succeeded task: {missing[:50]}\n"
                f"--- gateway log ---\n{gw.log()[-4000:]}\n--- mosquitto log ---\n{broker.log()[-3000:]}"
            ) from None
        assert {t["status"] for t in tasks} == {"Succeeded"}
        per_seq = Counter(event_of(t)["data"]["seq"] for t in tasks)
        # Nothing that was not published: at most the one message in flight when the publisher stopped.
        assert set(per_seq) - acked <= {max(acked) + 1}
        duplicates = sum(n - 1 for n in per_seq.values())
        duplicated = sorted(seq for seq, n in per_seq.items() if n > 1)
        health = await trigger_health(api, fn)
        print(
            f"mqtt restart: {len(before)} acked before the stop ({invoked_before_stop} invoked when the gateway "
            f"was frozen, ~{held} held by the broker), "
            f"{len(after)} after; {len(tasks)} tasks, {duplicates} duplicate executions (seqs {duplicated}); "
            f"broker stopped in {stop_took:.2f}s, down {outage:.1f}s; publisher acked again {publisher_back:.1f}s "
            f"and trigger resubscribed {trigger_back:.1f}s after the stop; publisher disconnects "
            f"{load.disconnects}, refused {load.refused}, unrouted {load.no_subscribers}; trigger errors "
            f"{health['errors']}; {time.monotonic() - began:.1f}s in all"
        )
        assert load.disconnects >= 1 and load.refused == 0 and load.no_subscribers == 0
        # At least once, with a bound. The trigger's task ids are not derived from the message (an
        # MQTT packet id is only unique within one connection), so every redelivered message runs
        # again. Redelivered are only the messages the broker had sent to the trigger whose PUBACK
        # it had not received when it stopped: at most its in-flight window per client. Plus the
        # publisher's one unacknowledged message, which paho sends again after the restart and the
        # broker (clean publisher session) cannot tell from a new one.
        assert duplicates <= BROKER_INFLIGHT + 1, duplicated
    finally:
        load.stop.set()
        if sender is not None:
            await sender
        broker.stop()
