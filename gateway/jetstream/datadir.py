"""One gateway per embedded store: an exclusive lock on nats.data_dir for the process's life.

A second `fngate serve` on the same data_dir must not touch the first one's nats-server:
it finds the lock held and refuses, naming the process that holds it. The kernel drops
the lock when its holder dies (however it dies), so a lock that can be taken means that
whatever server the pid file names is truly stale.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from gateway.errors import FngateError

LOCK_NAME = "fngate.lock"


class DataDirInUse(FngateError):
    code = "DataDirInUse"


class DataDirLock:
    """Held from `acquire` until `release` or the end of the process."""

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Not inherited by children (os.open's default): the nats-server child must not keep
        # the store locked after its gateway has gone.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirInUse(
                f"nats.data_dir {self.data_dir} is in use by another gateway (pid {holder}); "
                "stop that one first, or give this one its own nats.data_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


_HELD: dict[Path, DataDirLock] = {}


def hold(data_dir: str | Path) -> DataDirLock:
    """Take the data_dir's lock for this process, once; raises DataDirInUse if another holds it."""
    key = Path(data_dir).resolve()
    lock = _HELD.get(key)
    if lock is None:
        lock = DataDirLock(data_dir)
        lock.acquire()
        _HELD[key] = lock
    return lock
