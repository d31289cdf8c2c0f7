"""What every benchmark needs: the processes under test, a load generator, and statistics.

The processes are the ones the tests use (tests/services.py): a real nats-server on a temp
dir, `fngate serve` as a child process, the Kafka-protocol and MQTT test brokers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.services import ROOT, GatewayProcess, NatsServer, Service, free_port, wait_for_port

BENCH_DIR = Path(__file__).resolve().parent
# A 200-byte JSON payload, as the issue and the references use.
BODY = json.dumps({"order": "A-1042", "sku": "fngate-bench", "qty": 3, "pad": ""}, separators=(",", ":"))
BODY = BODY.replace('"pad":""', '"pad":"' + "x" * (200 - len(BODY)) + '"')
assert len(BODY) == 200


@dataclass(frozen=True)
class Settings:
    """How long and how much: `--quick` shrinks every scenario to a smoke run."""

    seconds: float = 10.0  # each wrk run
    tasks: int = 20_000  # end to end, and per trigger
    backlog: int = 200_000
    ticks: int = 50  # timer jitter samples
    history: int = int(os.environ.get("FNGATE_BENCH_HISTORY", 1_000_000))  # tasks in the scale_out history

    @classmethod
    def quick(cls) -> Settings:
        return cls(seconds=3.0, tasks=2_000, backlog=10_000, ticks=10, history=20_000)


@dataclass
class Figure:
    """One measured number, with what it is compared against."""

    scenario: str
    name: str
    value: float
    unit: str
    ratio: float | None = None  # value / reference, where a reference ran in the same run
    reference: str | None = None
    target: str | None = None
    met: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), nearest-rank: the figure wrk and most tools report."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def machine() -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "nats_server": _version([_nats_binary(), "--version"]),
        "wrk": _version(["wrk", "--version"]),
    }


def _nats_binary() -> str:
    return shutil.which("nats-server") or "/usr/sbin/nats-server"


def _version(command: list[str]) -> str:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "unknown"


# --- load generation -------------------------------------------------------------------------


@dataclass
class WrkResult:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # non-2xx answers and socket errors


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not match:
        raise ValueError(f"unreadable latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def wrk(url: str, *, seconds: float, connections: int = 64, threads: int = 1) -> WrkResult:
    """POST the 200-byte body to `url` with wrk, a separate process, for `seconds`."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk not found: `make bench` installs it (Debian package wrk)")
    command = [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
        "-s", str(BENCH_DIR / "post.lua"), url,
    ]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "BENCH_BODY": BODY}, check=True)
    result = parse_wrk(out.stdout)
    if result.errors:
        # A refused or failed request is fast; counting it as throughput would flatter the figure.
        raise RuntimeError(f"{result.errors} of {result.requests} requests to {url} failed:\n{out.stdout}")
    return result


def parse_wrk(text: str) -> WrkResult:
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", text).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", text).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", text).group(1))  # type: ignore[union-attr]
    errors = 0
    if match := re.search(r"Non-2xx or 3xx responses: (\d+)", text):
        errors += int(match.group(1))
    if match := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text):
        errors += sum(int(g) for g in match.groups())
    return WrkResult(rate, p50, p99, requests, errors)


# --- processes under test -------------------------------------------------------------------


class RefServer(Service):
    """The reference aiohttp servers of bench/refserver.py, as a child process."""

    def __init__(self, workdir: Path, mode: str, nats_url: str = "") -> None:
        super().__init__(workdir)
        self.mode = mode
        self.nats_url = nats_url

    def command(self) -> list[str]:
        return [sys.executable, "-m", "bench.refserver", self.mode, str(self.port), self.nats_url]

    def start(self) -> None:
        log = open(self.log_path, "ab")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        log.close()
        wait_for_port(self.port, proc=self.proc)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


class Stack:
    """A temp dir holding one run's nats-server, gateways and brokers; all stopped on exit."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.services: list[Service] = []

    def nats(self) -> NatsServer:
        # The embedded default raises max_payload the same way; the bench keeps the server's.
        server = NatsServer(self.root / f"nats-{len(self.services)}")
        server.start()
        self.services.append(server)
        return server

    def gateway(
        self, config: dict[str, Any], env: dict[str, str] | None = None, wait_ready: bool = True
    ) -> GatewayProcess:
        config.setdefault("logging", {"level": "warning"})
        gateway = GatewayProcess(self.root / f"gateway-{len(self.services)}", config, env=env, wait_ready=wait_ready)
        gateway.start()
        self.services.append(gateway)
        return gateway

    def add(self, service: Service) -> Any:
        service.start()
        self.services.append(service)
        return service

    def close(self) -> None:
        for service in reversed(self.services):
            service.stop()
        self.services.clear()


@contextmanager
def stack() -> Iterator[Stack]:
    with tempfile.TemporaryDirectory(prefix="fngate-bench-") as tmp:
        run = Stack(Path(tmp))
        try:
            yield run
        finally:
            run.close()


def function(handler: str, **options: Any) -> dict[str, Any]:
    return {"handler": f"python:bench.functions:{handler}", **options}


def wait_for(check: Any, timeout: float, interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached after {timeout}s")


__all__ = [
    "BODY",
    "Figure",
    "Settings",
    "Stack",
    "free_port",
    "function",
    "machine",
    "percentile",
    "rss_mb",
    "stack",
    "wrk",
]
