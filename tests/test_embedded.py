"""nats.url: embedded starts a nats-server child with JetStream under data_dir, and reuses it."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from tests.conftest import Api, GatewayFactory
from tests.services import ROOT


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def embedded_port(data_dir: Path) -> int:
    log = (data_dir / "nats-server.log").read_text()
    line = [x for x in log.splitlines() if "Listening for client connections on" in x][-1]
    return int(line.rsplit(":", 1)[1])


async def test_embedded_store_survives_restart(
    gateway_factory: GatewayFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    config = {
        "nats": {"url": "embedded", "data_dir": str(data_dir)},
        "functions": {"echo": {"handler": "python:examples.functions:echo"}},
    }
    gw = gateway_factory(config)
    api = Api(http, gw.url)
    done = await api.submit("echo", {"before": 1})
    await api.wait_status(done, "Succeeded")
    later = await api.submit("echo", {"later": 1}, X_Delay="3")
    nats_port = embedded_port(data_dir)
    assert port_open(nats_port)
    gw.stop()
    assert gw.proc is not None and gw.proc.returncode == 0
    assert not port_open(nats_port), "the nats-server child outlived the gateway"
    assert (data_dir / "jetstream").is_dir()

    gw.start()
    assert (await api.task(done))["status"] == "Succeeded"
    record = await api.wait_status(later, "Succeeded", timeout=20)
    assert record["result"]["echo"] == {"later": 1}


def test_missing_nats_server_binary_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "fngate.yaml"
    config.write_text("nats: {url: embedded, data_dir: %s}\napi: {listen: 127.0.0.1:0}\n" % (tmp_path / "d"))
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "-c", str(config)],
        env={"PATH": "/nonexistent", "FNGATE_NATS_SERVER": str(tmp_path / "no-such-binary"), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode != 0
    assert "nats-server" in result.stderr and "Traceback" not in result.stderr


def test_embedded_server_dies_with_a_killed_gateway(gateway_factory: GatewayFactory, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    gw = gateway_factory({"nats": {"url": "embedded", "data_dir": str(data_dir)}, "functions": {}})
    nats_port = embedded_port(data_dir)
    assert port_open(nats_port)
    gw.kill()
    deadline = time.monotonic() + 10
    while port_open(nats_port) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not port_open(nats_port), "a SIGKILLed gateway left its nats-server running"


async def test_default_body_limit_fits_the_embedded_server(
    gateway_factory: GatewayFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    gw = gateway_factory(
        {
            "nats": {"url": "embedded", "data_dir": str(tmp_path / "d")},
            "functions": {"wc": {"command": ["wc", "-c"]}},
        }
    )
    api = Api(http, gw.url)
    size = 5 * 1024 * 1024
    async with http.post(
        f"{gw.url}/v1/functions/wc/invocations",
        data=io.BytesIO(b"x" * size),
        headers={"X-Invocation-Type": "async", "Content-Type": "application/octet-stream"},
    ) as resp:
        body = await resp.json()
        assert resp.status == 202, body
    record = await api.wait_status(body["task_id"], "Succeeded")
    assert record["result"] == size
