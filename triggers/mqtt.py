"""The mqtt trigger: messages on a topic filter (MQTT 3.1.1 or 5) become invocations.

paho-mqtt runs its network loop in its own thread; each message is handed to the event
loop with call_soon_threadsafe. With QoS 1 and 2 the acknowledgement is sent by hand, only
after the invocation was durably enqueued, and in the order the messages arrived, so an
unacknowledged message is redelivered by the broker rather than lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import BeforeValidator, Field, field_validator

from gateway.config.model import Duration, TriggerConfig
from gateway.supervise import supervised
from gateway.tasks.invocation import BatchItem, iso, lineage_from_headers, new_task_id

from .base import (
    COMPACT_JSON,
    SPECVERSION,
    BaseTrigger,
    HeaderValue,
    TriggerContext,
    TriggerState,
    header_fields,
    json_string,
    parse_json,
    parse_options,
)
from .shaping import BatchedOptions, batch_max_bytes, batch_task, chunks

log = logging.getLogger(__name__)
Protocol = Annotated[Literal["5", "3.1.1"], BeforeValidator(str)]


class MqttOptions(BatchedOptions):
    url: str = Field(pattern=r"^(mqtt|mqtts|tcp|ssl)://")
    topic: str = Field(min_length=1)
    qos: Literal[0, 1, 2] = 1
    protocol: Protocol = "5"
    shared_group: str | None = Field(default=None, pattern=r"^[^/+#]+$")
    client_id: str | None = Field(default=None, max_length=128)
    # A persistent session (clean_session: false, with a fixed client_id per replica) makes
    # the broker keep messages for the gateway while it is down or restarting.
    clean_session: bool = True
    session_expiry: Duration = Field(default=3600.0, ge=0)
    username: str | None = None
    password: str | None = Field(default=None, repr=False)
    ca_certs: str | None = None
    keepalive: int = Field(default=30, ge=5, le=3600)
    max_inflight: int = Field(default=32, ge=1, le=1000)
    # A message with the retain flag was sent because the trigger (re)subscribed: the topic's
    # last state, replayed at every connect, not a new event (a live publish reaches an
    # existing subscription with the flag cleared, whatever its publisher set). `skip` acks
    # and drops those, so a restart does not run the last message again; `process` keeps them.
    retained: Literal["skip", "process"] = "skip"

    @field_validator("topic")
    @classmethod
    def _valid_filter(cls, value: str) -> str:
        for level in value.split("/")[:-1]:
            if level == "#":
                raise ValueError("'#' may only be the last level of a topic filter")
        if any(("+" in level or "#" in level) and len(level) > 1 for level in value.split("/")):
            raise ValueError("wildcards must take a whole topic level (a/+/c, a/#)")
        return value


@dataclass(frozen=True, slots=True)
class Incoming:
    """A message copied out of paho's thread."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int
    session: int  # which connection delivered it: acks go only to that one
    properties: dict[str, str] = field(default_factory=dict)  # each name's first value: the lineage's
    property_fields: dict[str, HeaderValue] = field(default_factory=dict)  # the event's (base.header_fields)
    content_type: str | None = None


READ_CHUNK = 64 * 1024  # bytes one recv() may take from the socket
PUBACK_HEAD = bytes([paho.PUBACK, 2])  # a PUBACK's fixed header: remaining length 2, the message id


def variable_int(data: bytes | bytearray, at: int) -> tuple[int, int]:
    """An MQTT variable byte integer at `at`: (its value, the bytes it took, 1..4)."""
    value = 0
    for i in range(4):
        byte = data[at + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, i + 1
    raise ValueError("malformed variable byte integer")


class _Client(paho.Client):
    """paho's client, reading its socket in chunks.

    paho reads a packet in three or more recv() calls (the fixed header a byte at a time)
    and goes back to select() after every packet: at thousands of messages a second those
    system calls were a large part of its network thread. Here one recv() takes what the
    socket holds (up to READ_CHUNK), packets are cut from that buffer, and a read goes on
    until the buffer is used up, so no bytes wait in it where select() cannot see them.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._buffer = b""
        self._at = 0
        self._buffered_from: object = None  # the socket the buffer was read from

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._buffered_from is not self._sock:  # a new connection: the old bytes are not its own
            self._buffer, self._at, self._buffered_from = b"", 0, self._sock
        if self._at >= len(self._buffer):
            # Raises BlockingIOError when the socket is empty; b"" when the broker closed it.
            self._buffer, self._at = super()._sock_recv(READ_CHUNK), 0
        chunk = self._buffer[self._at : self._at + bufsize]
        self._at += len(chunk)
        return chunk

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        rc = super().loop_read(max_packets)
        while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and self._sock is not None and self._at < len(self._buffer):
            rc = super().loop_read(max_packets)
        return rc

    def puback_all(self, mids: Sequence[int]) -> None:
        """The PUBACKs of QoS 1 messages, in order, queued as one write: paho's ack() queues
        each alone, wakes its network thread for each and sends each with its own syscall,
        which was a third of the CPU of a QoS 1 message."""
        if mids:
            self._packet_queue(paho.PUBACK, b"".join([PUBACK_HEAD + mid.to_bytes(2, "big") for mid in mids]), 0, 0)

    # Set by the trigger: takes every QoS 0 and 1 PUBLISH straight from the packet.
    on_publish_packet: Callable[[str, bytes, int, bool, int, Properties | None], None] | None = None

    def _handle_publish(self) -> MQTTErrorCode:
        """QoS 0 and 1 PUBLISH packets decoded here and handed to `on_publish_packet`.

        paho's own path builds a Properties object for every MQTT 5 message (mostly empty),
        an MQTTMessage, and matches the topic against per-topic callbacks under a lock, the
        trigger using none: over a third of its network thread. The trigger acknowledges by
        hand (manual_ack), so nothing else of paho's path is skipped. QoS 2 takes paho's path.
        """
        command, packet = self._in_packet["command"], self._in_packet["packet"]
        qos = (command & 0x06) >> 1
        handler = self.on_publish_packet
        if handler is None or qos > 1 or len(packet) < 2:
            return super()._handle_publish()
        end = 2 + int.from_bytes(packet[0:2], "big")
        # MQTT topics are UTF-8; one that is not must not stop the loop (paho would raise
        # in the callback): it is kept readable, its bad bytes replaced.
        topic = packet[2:end].decode(errors="replace")
        mid = 0
        if qos:
            mid = int.from_bytes(packet[end : end + 2], "big")
            end += 2
        properties = None
        if self._protocol == paho.MQTTv5:
            if end < len(packet) and packet[end] == 0:  # no properties: the usual case
                end += 1
            else:
                length, used = variable_int(packet, end)
                block = packet[end : end + used + length]
                end += used + length
                properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                try:
                    properties.unpack(block)  # type: ignore[no-untyped-call]
                except Exception as exc:
                    # paho refuses some strings a broker forwards (U+FEFF, say): raised here it
                    # would drop the connection, and the broker would send the message again
                    # on every reconnect. It is delivered without its properties instead.
                    log.warning(
                        "mqtt: a message on %r has unreadable properties (%s); delivered without them", topic, exc
                    )
                    properties = None
        handler(topic, bytes(packet[end:]), qos, bool(command & 0x01), mid, properties)
        return MQTTErrorCode.MQTT_ERR_SUCCESS


class MqttTrigger(BaseTrigger):
    """Subscribes to `topic` (as `$share/<shared_group>/<topic>` when set); one invocation per message."""

    type = "mqtt"
    Options = MqttOptions

    def __init__(self, config: TriggerConfig, context: TriggerContext) -> None:
        super().__init__(config, context)
        self.options = parse_options(MqttOptions, config, self.path)
        self.pattern = self.options.event_pattern()
        self.retained_skipped = 0
        topic = self.options.topic
        group = self.options.shared_group
        self.subscription = f"$share/{group}/{topic}" if group else topic
        self.v5 = self.options.protocol == "5"
        self.session = 0
        self.connected = False
        self.client: _Client | None = None
        self.inbox: asyncio.Queue[Incoming] = asyncio.Queue()
        # Messages from paho's network thread wait here until the event loop drains them: one
        # wake-up of the loop per burst, not per message (a wake-up is a write to the loop's
        # self-pipe, which cost more than a tenth of the gateway's time at a few thousand/s).
        self._arrivals: deque[Incoming] = deque()
        self._wakeup_pending = False
        self._in_order: asyncio.Queue[tuple[list[Incoming], asyncio.Task[bool]]] = asyncio.Queue()
        batch = self.options.batch
        # Room for two whole batches in flight, whatever max_inflight says: one filling, one
        # being enqueued (the broker's own in-flight limit for QoS 1/2 may still cap a batch).
        self._slots = asyncio.Semaphore(max(self.options.max_inflight, 2 * batch.size if batch else 0))
        self._getter: asyncio.Task[Incoming] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        # What every event of this trigger shares, encoded once (see _encoded).
        self._skip = self.options.retained == "skip"
        self._group = "null" if group is None else json_string(group)

    async def start(self) -> None:
        self._loop = loop = asyncio.get_running_loop()
        client = self.client = self._client()
        url = urlsplit(self.options.url)
        tls = url.scheme in ("mqtts", "ssl")
        if tls:
            client.tls_set(ca_certs=self.options.ca_certs)
        username = self.options.username or (unquote(url.username) if url.username else None)
        password = self.options.password or (unquote(url.password) if url.password else None)
        if username:
            client.username_pw_set(username, password)
        connect: dict[str, Any] = {}
        if self.v5:
            connect["clean_start"] = self.options.clean_session
            if not self.options.clean_session:
                properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                properties.SessionExpiryInterval = int(self.options.session_expiry)
                connect["properties"] = properties
        # Connecting happens in paho's thread, retried there: a broker that is down at
        # start-up or later is reconnected to, and on_connect subscribes again each time.
        client.connect_async(url.hostname or "127.0.0.1", url.port or (8883 if tls else 1883), **connect)
        # Before paho's thread starts: its SUBACK sets "running", which must not be overwritten.
        self.state = TriggerState.CONNECTING
        self._tasks = [
            loop.create_task(supervised(f"mqtt trigger {self.name}: pump", self._pump, stopping=self._stopping)),
            loop.create_task(supervised(f"mqtt trigger {self.name}: ack", self._acknowledge, stopping=self._stopping)),
        ]
        client.loop_start()

    def _client(self) -> _Client:
        client_id = self.options.client_id or f"fngate-{self.name}-{secrets.token_hex(4)}"
        client = _Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5 if self.v5 else paho.MQTTv311,
            clean_session=None if self.v5 else self.options.clean_session,
            manual_ack=True,
        )
        client.reconnect_delay_set(min_delay=1, max_delay=5)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish_packet = self._on_publish_packet
        return client

    async def stop(self) -> None:
        self._stopping.set()
        if self.client is not None:
            self.client.disconnect()
            await asyncio.to_thread(self.client.loop_stop)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._getter is not None:
            self._getter.cancel()
        self.state = TriggerState.STOPPED

    def ready(self) -> bool:
        return self.state is TriggerState.RUNNING and self.connected  # running: the SUBACK came

    def health(self) -> dict[str, Any]:
        return {
            **super().health(),
            "subscription": self.subscription,
            "connected": self.connected,
            "retained": self.options.retained,
            "retained_skipped": self.retained_skipped,
        }

    # --- paho's thread ----------------------------------------------------------------

    def _on_connect(self, client: paho.Client, _userdata: Any, _flags: Any, reason: ReasonCode, _props: Any) -> None:
        if reason.is_failure:
            log.warning("mqtt trigger %s: connection refused: %s", self.name, reason)
            return
        self.session += 1
        self.connected = True
        client.subscribe(self.subscription, qos=self.options.qos)

    def _on_subscribe(
        self, _client: paho.Client, _userdata: Any, _mid: int, reasons: list[ReasonCode], _p: Any
    ) -> None:
        refused = [reason for reason in reasons if reason.is_failure]
        if refused:
            self.state = TriggerState.FAILED
            self.count_error(f"subscription to {self.subscription} refused: {refused[0]}")
            log.error("mqtt trigger %s: subscription to %s refused: %s", self.name, self.subscription, refused[0])
            return
        self.state = TriggerState.RUNNING
        log.info("mqtt trigger %s: subscribed to %s", self.name, self.subscription)

    def _on_disconnect(self, _client: paho.Client, _userdata: Any, _flags: Any, reason: ReasonCode, _p: Any) -> None:
        self.connected = False
        if not self._stopping.is_set():
            self.state = TriggerState.CONNECTING
            log.warning("mqtt trigger %s: disconnected (%s); reconnecting", self.name, reason)

    def _on_message(self, _client: paho.Client, _userdata: Any, message: paho.MQTTMessage) -> None:
        """paho's path (QoS 2): the message as `_on_publish_packet` takes it."""
        self._on_publish_packet(
            message.topic, bytes(message.payload), message.qos, bool(message.retain), message.mid, message.properties
        )

    def _on_publish_packet(
        self, topic: str, payload: bytes, qos: int, retain: bool, mid: int, props: Properties | None
    ) -> None:
        """In paho's network thread: the message queued for the event loop."""
        properties: dict[str, str] = {}
        fields: dict[str, HeaderValue] = {}
        content_type = None
        if props is not None:
            pairs = getattr(props, "UserProperty", None)
            if pairs:
                properties, fields = header_fields([(str(key), str(value)) for key, value in pairs])
            content_type = getattr(props, "ContentType", None)
        self._arrivals.append(
            Incoming(topic, payload, qos, retain, mid, self.session, properties, fields, content_type)
        )
        if not self._wakeup_pending:
            self._wakeup_pending = True
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._drain_arrivals)

    def _drain_arrivals(self) -> None:
        # Reset before draining: a message appended after the reset schedules its own drain,
        # one appended before it is taken by this one (the append precedes the flag check).
        self._wakeup_pending = False
        while self._arrivals:
            self.inbox.put_nowait(self._arrivals.popleft())

    # --- the event loop ---------------------------------------------------------------

    async def _pump(self) -> None:
        """Submit what has arrived as one batch, up to max_inflight messages in flight in all;
        with `batch:`, a group is up to batch.size messages or what arrived within its
        window. Acks follow in arrival order."""
        batch = self.options.batch
        while True:
            first = await self._take(None)
            assert first is not None
            group = [first]
            await self._slots.acquire()
            if batch is None:
                while not self.inbox.empty() and not self._slots.locked():
                    await self._slots.acquire()
                    group.append(self.inbox.get_nowait())
            else:
                deadline = time.monotonic() + batch.window
                while len(group) < batch.size:
                    incoming = await self._take(max(0.0, deadline - time.monotonic()))
                    if incoming is None:
                        break
                    await self._slots.acquire()
                    group.append(incoming)
            task = asyncio.get_running_loop().create_task(self._deliver(group))
            task.add_done_callback(functools.partial(self._release, len(group)))
            await self._in_order.put((group, task))

    async def _take(self, timeout: float | None) -> Incoming | None:
        """The next message, or None after `timeout`. A get that timed out stays pending for
        the next call (cancelling it could lose the message it was about to return)."""
        if self._getter is None:
            if not self.inbox.empty():
                return self.inbox.get_nowait()
            self._getter = asyncio.get_running_loop().create_task(self.inbox.get())
        done, _ = await asyncio.wait({self._getter}, timeout=timeout)
        if not done:
            return None
        incoming = self._getter.result()
        self._getter = None
        return incoming

    def _release(self, count: int, _done: asyncio.Task[bool]) -> None:
        for _ in range(count):
            self._slots.release()

    async def _acknowledge(self) -> None:
        while True:
            batch, task = await self._in_order.get()
            if not await task:
                continue
            client = self.client
            if client is None:
                continue
            # An ack is only meaningful on the connection that delivered the message: after
            # a reconnect the broker sends unacknowledged messages again. In arrival order,
            # as MQTT asks; each run of QoS 1 acks is one write.
            pubacks: list[int] = []
            for incoming in batch:
                if incoming.qos == 0 or incoming.session != self.session:
                    continue
                if incoming.qos == 1:
                    pubacks.append(incoming.mid)
                    continue
                client.puback_all(pubacks)
                pubacks = []
                client.ack(incoming.mid, incoming.qos)
            client.puback_all(pubacks)

    async def _deliver(self, group: list[Incoming]) -> bool:
        """True once the group is done with (enqueued, dropped, or refused for good); False
        when stopping. Every message of it is acked after, dropped ones included."""
        self.count_event(len(group))  # counted per group: an increment per event was a real cost
        items, skipped = [], 0
        for incoming in group:
            if incoming.retain and self._skip:
                skipped += 1
                continue
            item = self._event(incoming)
            if item is not None:
                items.append(item)
        self.retained_skipped += skipped
        self.count_filtered(len(items), len(group) - skipped - len(items))
        batch = self.options.batch
        if batch is not None and items:
            items = [
                batch_task(f"mqtt-{self.name}-batch", run)
                for run in chunks(items, batch.size, batch_max_bytes(self.context))
            ]
        if items:
            await self.submit_batch(items)
        return not self._stopping.is_set()

    def _event(self, incoming: Incoming) -> BatchItem | None:
        """The message as a CloudEvent with a new task id, and the lineage it carries; None
        when the filter drops it. Not counted (see _deliver)."""
        task_id = new_task_id()
        lineage = lineage_from_headers(incoming.properties) if incoming.properties else None
        if self.pattern is None and (parsed := parse_json(incoming.payload) if incoming.payload else None) is not None:
            return self._encoded(incoming, task_id, parsed[0]), task_id, lineage
        # A filter to match, or a payload that is not JSON: the event as a dict first.
        extra = {
            "topic": incoming.topic,
            "qos": incoming.qos,
            "retain": incoming.retain,
            "user_properties": incoming.property_fields,
            "content_type": incoming.content_type,
            "shared_group": self.options.shared_group,
        }
        event, parsed = self._envelope(task_id, "message", incoming.topic, incoming.payload, None, None, extra)
        if not self.passes(event, parsed):
            return None
        if parsed is None:
            encoded = self.cloud_event(event_id=task_id, kind="message", subject=incoming.topic, raw=incoming.payload,
                                       at=None, extra=extra)  # fmt: skip
            return encoded, task_id, lineage
        return self._encoded(incoming, task_id, parsed[0], event["time"]), task_id, lineage

    def _encoded(self, incoming: Incoming, task_id: str, data: str, at: str | None = None) -> bytes:
        """cloud_event() of a message whose payload is the JSON text `data`, byte for byte,
        written from a template (encoding the envelope's dict was most of an event's cost
        in the event loop). tests/triggers/test_mqtt.py checks it against cloud_event()."""
        topic = json_string(incoming.topic)
        properties = COMPACT_JSON.encode(incoming.property_fields) if incoming.property_fields else "{}"
        content_type = "null" if incoming.content_type is None else json_string(incoming.content_type)
        return (
            f'{{"specversion":"{SPECVERSION}","id":{json_string(task_id)},"source":{self.event_source_json},'
            f'"type":"fngate.mqtt.message","time":"{at or iso(time.time())}","subject":{topic},'
            f'"datacontenttype":"application/json","trigger":{self.trigger_ref_json},"mqtt":{{"topic":{topic},'
            f'"qos":{incoming.qos},"retain":{"true" if incoming.retain else "false"},'
            f'"user_properties":{properties},"content_type":{content_type},"shared_group":{self._group}}},'
            f'"data":{data.strip()}}}'
        ).encode()
