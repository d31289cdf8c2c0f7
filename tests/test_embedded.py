"""nats.url: embedded starts a nats-server child with JetStream under data_dir, and reuses it."""

from __future__ import annotations

import asyncio
import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import yaml

from tests.conftest import Api, GatewayFactory
from tests.services import ROOT, binary, free_port, wait_for_port


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


def serve(config_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "-c", str(config_path)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


async def test_a_second_gateway_on_the_same_data_dir_refuses_and_leaves_the_first_alone(
    gateway_factory: GatewayFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    config = {
        "nats": {"url": "embedded", "data_dir": str(data_dir)},
        "functions": {"echo": {"handler": "python:examples.functions:echo"}},
    }
    first = gateway_factory(config)
    assert first.proc is not None
    assert f"listening on {first.url} (console at /)" in first.log()
    nats_port = embedded_port(data_dir)

    second = tmp_path / "second.yaml"
    second.write_text(yaml.safe_dump({**config, "api": {"listen": f"127.0.0.1:{free_port()}"}}))
    result = await asyncio.to_thread(serve, second)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"fngate: nats.data_dir {data_dir} is in use by another gateway (pid {first.proc.pid}); "
        "stop that one first, or give this one its own nats.data_dir"
    )

    # The first gateway did not notice: same NATS server, ready, and it still runs tasks.
    assert port_open(nats_port) and embedded_port(data_dir) == nats_port
    assert "stale" not in first.log()
    api = Api(http, first.url)
    status, body = await api.get("/readyz")
    assert status == 200 and body["ready"], body
    record = await api.wait_status(await api.submit("echo", {"still": "here"}), "Succeeded")
    assert record["result"]["echo"] == {"still": "here"}


def test_an_api_port_in_use_is_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "fngate.yaml"
        config.write_text(
            yaml.safe_dump(
                {"nats": {"url": "embedded", "data_dir": str(tmp_path / "d")}, "api": {"listen": f"127.0.0.1:{port}"}}
            )
        )
        result = serve(config)
    assert result.returncode == 1
    assert result.stderr.strip() == f"fngate: api.listen: cannot listen on 127.0.0.1:{port}: address already in use"
    assert not (tmp_path / "d" / "nats-server.pid").exists(), "a nats-server was started for nothing"


def test_a_stale_server_whose_gateway_is_gone_is_stopped(gateway_factory: GatewayFactory, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    store = (data_dir / "jetstream").resolve()
    store.mkdir(parents=True)
    port = free_port()
    stale = subprocess.Popen(
        [binary("nats-server"), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, proc=stale)
        (data_dir / "nats-server.pid").write_text(str(stale.pid))
        gw = gateway_factory({"nats": {"url": "embedded", "data_dir": str(data_dir)}, "functions": {}})
        assert stale.wait(10) is not None
        assert f"stopping a stale nats-server (pid {stale.pid})" in gw.log()
    finally:
        stale.kill()
        stale.wait()


def test_a_nats_port_in_use_is_a_one_line_error(tmp_path: Path) -> None:
    # A stand-in nats-server that finds every port taken, as a real one logs it.
    fake = tmp_path / "nats-server"
    fake.write_text(
        "#!/bin/sh\n"
        'while [ $# -gt 0 ]; do [ "$1" = -l ] && log="$2"; shift; done\n'
        'echo "[FTL] Error listening on port: 127.0.0.1:1, bind: address already in use" >> "$log"\n'
        "exit 1\n"
    )
    fake.chmod(0o755)
    data_dir = tmp_path / "d"
    config = tmp_path / "fngate.yaml"
    config.write_text(
        yaml.safe_dump(
            {"nats": {"url": "embedded", "data_dir": str(data_dir)}, "api": {"listen": f"127.0.0.1:{free_port()}"}}
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "-c", str(config)],
        env={**os.environ, "PYTHONPATH": str(ROOT), "FNGATE_NATS_SERVER": str(fake)},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"fngate: nats-server found no free port; see {data_dir / 'nats-server.log'}"
    )
    assert (data_dir / "nats-server.log").read_text().count("address already in use") == 3
