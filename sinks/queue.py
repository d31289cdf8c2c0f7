"""The queue destination: the record as a message on NATS, Kafka or MQTT.

Lineage goes along in message headers (NATS and Kafka headers, MQTT 5 user properties),
so a trigger reading the same subject or topic continues the chain and a loop is caught.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Any, ClassVar, Literal
from urllib.parse import urlparse

from pydantic import Field, model_validator

from gateway.tasks.invocation import lineage_headers

from .base import Delivery, KiB, PermanentDeliveryError, SinkContext, SinkOptions, TransientDeliveryError

log = logging.getLogger(__name__)
SEND_TIMEOUT = 10.0


class QueueOptions(SinkOptions):
    backend: Literal["nats", "kafka", "mqtt"]
    subject: str | None = Field(default=None, pattern=r"^[^\s*>]+$")
    topic: str | None = Field(default=None, min_length=1)
    url: str | None = None  # nats:// or mqtt://; default for nats: the gateway's connection
    bootstrap_servers: str | None = None
    qos: Literal[0, 1, 2] = 1

    @model_validator(mode="after")
    def _target(self) -> QueueOptions:
        if self.backend == "nats" and not self.subject:
            raise ValueError("backend nats needs a subject")
        if self.backend in ("kafka", "mqtt") and not self.topic:
            raise ValueError(f"backend {self.backend} needs a topic")
        if self.backend == "kafka" and not self.bootstrap_servers:
            raise ValueError("backend kafka needs bootstrap_servers")
        if self.backend == "mqtt" and not (self.url or "").startswith("mqtt://"):
            raise ValueError("backend mqtt needs url: mqtt://host:port")
        return self


class QueueSink:
    Options: ClassVar[type[SinkOptions]] = QueueOptions
    default_max_payload: ClassVar[int] = 64 * KiB

    def __init__(self, options: QueueOptions, context: SinkContext) -> None:
        self.options = options
        self.context = context
        self.backend: NatsBackend | KafkaBackend | MqttBackend
        if options.backend == "nats":
            assert options.subject is not None
            self.backend = NatsBackend(options.subject, options.url, context)
        elif options.backend == "kafka":
            assert options.topic is not None and options.bootstrap_servers is not None
            self.backend = KafkaBackend(options.topic, options.bootstrap_servers)
        else:
            assert options.topic is not None and options.url is not None
            self.backend = MqttBackend(options.topic, options.url, options.qos)

    @property
    def target(self) -> str:
        return f"{self.options.backend}:{self.options.subject or self.options.topic}"

    async def deliver(self, delivery: Delivery) -> None:
        headers = {
            **lineage_headers(delivery.lineage),
            "Fngate-Task-Id": delivery.task_id,
            "Fngate-Condition": delivery.condition,
            "Content-Type": "application/json",
            **delivery.trace_headers(),
        }
        await self.backend.send(delivery.body, headers)

    async def close(self) -> None:
        await self.backend.close()


class NatsBackend:
    """JetStream publish with ack when a stream covers the subject, else core publish + flush."""

    def __init__(self, subject: str, url: str | None, context: SinkContext) -> None:
        self.subject = subject
        self.url = url
        self.context = context
        self._own: Any = None
        self._jetstream: bool | None = None

    async def connection(self) -> Any:
        if self.url is None:
            return self.context.nats
        if self._own is None:
            import nats

            try:
                self._own = await nats.connect(self.url, max_reconnect_attempts=-1, connect_timeout=2)
            except Exception as exc:
                raise TransientDeliveryError(f"cannot connect to {self.url}: {exc}") from None
        return self._own

    async def send(self, body: bytes, headers: dict[str, str]) -> None:
        from nats.errors import Error as NatsError
        from nats.js.errors import APIError, NotFoundError

        from gateway.jetstream.errors import refused_for_good

        nc = await self.connection()
        if not nc.is_connected:
            raise TransientDeliveryError("NATS is not connected")
        js = nc.jetstream(timeout=SEND_TIMEOUT)
        try:
            if self._jetstream is None:
                try:
                    await js.find_stream_name_by_subject(self.subject)
                    self._jetstream = True
                except NotFoundError:
                    self._jetstream = False
            if self._jetstream:
                await js.publish(self.subject, body, headers=headers, timeout=SEND_TIMEOUT)
            else:
                await nc.publish(self.subject, body, headers=headers)
                await nc.flush(timeout=SEND_TIMEOUT)
        except APIError as exc:
            if refused_for_good(exc):
                raise PermanentDeliveryError(f"JetStream refused: {exc.description}") from None
            raise TransientDeliveryError(f"JetStream: {exc.description}") from None
        except (TimeoutError, NatsError) as exc:
            raise TransientDeliveryError(f"NATS: {type(exc).__name__}: {exc}") from None

    async def close(self) -> None:
        if self._own is not None:
            with contextlib.suppress(Exception):
                await self._own.close()


class KafkaBackend:
    """aiokafka producer, acks=all; started on first use and again after a failure."""

    def __init__(self, topic: str, bootstrap_servers: str) -> None:
        self.topic = topic
        self.bootstrap_servers = bootstrap_servers
        self._producer: Any = None

    async def send(self, body: bytes, headers: dict[str, str]) -> None:
        from aiokafka import AIOKafkaProducer
        from aiokafka.errors import KafkaError

        try:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    bootstrap_servers=self.bootstrap_servers,
                    acks="all",
                    enable_idempotence=False,
                    request_timeout_ms=int(SEND_TIMEOUT * 1000),
                )
                await producer.start()
                self._producer = producer
            kafka_headers = [(k, v.encode()) for k, v in headers.items()]
            await asyncio.wait_for(self._producer.send_and_wait(self.topic, body, headers=kafka_headers), SEND_TIMEOUT)
        except (TimeoutError, KafkaError, OSError) as exc:
            await self.close()
            raise TransientDeliveryError(f"Kafka {self.bootstrap_servers}: {type(exc).__name__}: {exc}") from None

    async def close(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            with contextlib.suppress(Exception):
                await producer.stop()


class MqttBackend:
    """paho-mqtt 2 over MQTT 5; a publish counts once the broker acknowledged it (QoS 1/2)."""

    def __init__(self, topic: str, url: str, qos: int) -> None:
        self.topic = topic
        parsed = urlparse(url)
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 1883
        self.username = parsed.username
        self.password = parsed.password
        self.qos = qos
        self._client: Any = None
        self._connected = threading.Event()

    def _connect(self) -> Any:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        if self.username:
            client.username_pw_set(self.username, self.password)

        def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
            if not reason.is_failure:
                self._connected.set()

        def on_disconnect(client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
            self._connected.clear()

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.reconnect_delay_set(min_delay=1, max_delay=5)
        client.connect_async(self.host, self.port)
        client.loop_start()
        return client

    def _publish(self, body: bytes, headers: dict[str, str]) -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        if self._client is None:
            self._client = self._connect()
        if not self._connected.wait(5):
            raise TransientDeliveryError(f"MQTT broker {self.host}:{self.port} not connected")
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.UserProperty = list(headers.items())
        properties.ContentType = "application/json"
        info = self._client.publish(self.topic, body, qos=self.qos, properties=properties)
        info.wait_for_publish(SEND_TIMEOUT)
        if not info.is_published():
            raise TransientDeliveryError(f"MQTT broker {self.host}:{self.port} did not acknowledge")

    async def send(self, body: bytes, headers: dict[str, str]) -> None:
        try:
            await asyncio.to_thread(self._publish, body, headers)
        except (OSError, RuntimeError, ValueError) as exc:
            raise TransientDeliveryError(f"MQTT {self.host}:{self.port}: {exc}") from None

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            client.loop_stop()
            client.disconnect()
