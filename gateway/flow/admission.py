"""Which waiting task of a flow-controlled function starts next: the flow leader's memory.

Pure and synchronous (no NATS here), so every rule can be tested directly:
- the function's `concurrency` bounds what runs at once across the deployment;
- a key runs at most `key_limit` at once; a key at its limit is out of the rotation until
  one of its tasks ends, so it costs nothing while it waits;
- a higher priority starts before any lower one: nothing of a lower rank starts while a
  higher rank has a task that could start (also one still parked, being fetched);
- within a rank, keys take turns (round robin), so a key with 50,000 waiting and a key
  with 5 both progress;
- the rate limit's token bucket gates every start.
Tasks over the in-memory caps are parked (counted here, stored by the leader on FNGATE_FLOW)
and fetched back group by group: a group is one (rank, key).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .limits import PRIORITIES, Rate, TokenBucket

Group = tuple[int, str]  # (priority rank, concurrency key; "" for none)


@dataclass(slots=True)
class Waiter:
    msg: Any  # the JetStream message (its reply subject is the ack the worker will send)
    task_id: str
    key: str
    rank: int
    scheduled_at: float
    renewed: float = 0.0  # monotonic time of its last in_progress()


@dataclass(slots=True)
class Admitted:
    starts: list[Waiter] = field(default_factory=list)
    fetch: list[Group] = field(default_factory=list)  # parked groups to bring back into memory
    rate_wait: float | None = None  # seconds until a token, when the rate stopped admission


class Admission:
    def __init__(
        self,
        *,
        concurrency: int,
        key_limit: int | None,
        rate: Rate | None,
        now: float,
        group_cap: int = 64,
        window: int = 2000,
    ) -> None:
        self.concurrency = concurrency
        self.key_limit = key_limit
        self.bucket = TokenBucket(rate, now) if rate else None
        self.group_cap = group_cap  # waiting in memory per group; more is parked
        self.window = window  # waiting in memory in all; more is parked
        self.queues: dict[Group, deque[Waiter]] = {}
        self.parked: dict[Group, int] = {}
        self.fetching: set[Group] = set()
        # Per rank, the keys that may start now (ordered set: round-robin order).
        self.rings: list[dict[str, None]] = [{} for _ in PRIORITIES]
        self.running: dict[str, int] = {}
        self.total_running = 0
        self.queued = 0  # in memory

    # --- what comes in -----------------------------------------------------------------
    def should_park(self, group: Group) -> bool:
        """Beyond the caps, or behind tasks of its group already parked (order is kept)."""
        queue = self.queues.get(group)
        return (
            self.parked.get(group, 0) > 0
            or self.queued >= self.window
            # The per-group cap is for fairness among keys; tasks without a key are one group.
            or (queue is not None and group[1] != "" and len(queue) >= self.group_cap)
        )

    def add(self, waiter: Waiter) -> None:
        group = (waiter.rank, waiter.key)
        self.queues.setdefault(group, deque()).append(waiter)
        self.queued += 1
        self._touch(group)

    def add_parked(self, group: Group, count: int = 1) -> None:
        self.parked[group] = self.parked.get(group, 0) + count
        self._touch(group)

    def take_parked(self, group: Group) -> None:
        """A parked task came back (the caller adds it, or sends it on)."""
        left = self.parked.get(group, 0) - 1
        if left > 0:
            self.parked[group] = left
        else:
            self.parked.pop(group, None)

    def fetched(self, group: Group) -> None:
        self.fetching.discard(group)
        self._touch(group)

    def remove(self, waiter: Waiter) -> bool:
        queue = self.queues.get((waiter.rank, waiter.key))
        if queue is None or waiter not in queue:
            return False
        queue.remove(waiter)
        self.queued -= 1
        return True

    # --- running -----------------------------------------------------------------------
    def started(self, key: str) -> None:
        self.total_running += 1
        if key:
            self.running[key] = self.running.get(key, 0) + 1

    def finished(self, key: str) -> None:
        self.total_running = max(0, self.total_running - 1)
        if key:
            left = self.running.get(key, 0) - 1
            if left > 0:
                self.running[key] = left
            else:
                self.running.pop(key, None)
            for rank in range(len(PRIORITIES)):
                self._touch((rank, key))

    def runnable(self) -> int:
        """Waiting in memory with a free key (what could start once a slot and a token allow)."""
        if self.key_limit is None or not self.queued or not self.running:
            return self.queued
        return sum(len(queue) for (_, key), queue in self.queues.items() if self.key_free(key))

    def holds_rank(self, rank: int) -> bool:
        """Whether a task of this priority rank waits (in memory or parked)."""
        return any(r == rank and q for (r, _), q in self.queues.items()) or any(r == rank for r, _ in self.parked)

    def key_free(self, key: str) -> bool:
        return not key or self.key_limit is None or self.running.get(key, 0) < self.key_limit

    def _touch(self, group: Group) -> None:
        rank, key = group
        if (self.queues.get(group) or self.parked.get(group)) and self.key_free(key):
            self.rings[rank].setdefault(key, None)

    # --- the decision ------------------------------------------------------------------
    def admit(self, now: float) -> Admitted:
        result = Admitted()
        while self.total_running < self.concurrency:
            if self.bucket is not None and not self.bucket.available(now):
                if self.queued or self.parked:
                    result.rate_wait = self.bucket.wait(now)
                break
            picked = self._pick(result)
            if picked is None:
                break
            if self.bucket is not None:
                self.bucket.take(now)
            self.started(picked.key)
            result.starts.append(picked)
        return result

    def _pick(self, result: Admitted) -> Waiter | None:
        for rank, ring in enumerate(self.rings):
            waiting_on_park: list[str] = []
            picked: Waiter | None = None
            while ring:
                key = next(iter(ring))
                del ring[key]
                if not self.key_free(key):
                    continue  # back in the ring when one of its tasks ends
                group = (rank, key)
                queue = self.queues.get(group)
                if queue:
                    picked = queue.popleft()
                    self.queued -= 1
                    parked = self.parked.get(group, 0)
                    if queue or parked:
                        ring[key] = None  # to the back: the next key takes its turn
                    if not queue:
                        del self.queues[group]
                    if parked and len(queue) < max(1, self.group_cap // 4) and group not in self.fetching:
                        self.fetching.add(group)
                        result.fetch.append(group)
                    break
                if self.parked.get(group):
                    if group not in self.fetching:
                        self.fetching.add(group)
                        result.fetch.append(group)
                    waiting_on_park.append(key)
            for key in waiting_on_park:
                ring[key] = None
            if picked is not None:
                return picked
            if waiting_on_park:
                return None  # a higher rank is being fetched back: nothing lower starts meanwhile
        return None

    # --- what it looks like ------------------------------------------------------------
    def waiting_by_reason(self, now: float) -> dict[str, int]:
        reasons = {"concurrency": 0, "key": 0, "rate": 0}
        rate_blocked = self.bucket is not None and not self.bucket.available(now)
        groups = set(self.queues) | set(self.parked)
        for group in groups:
            count = len(self.queues.get(group, ())) + self.parked.get(group, 0)
            if not self.key_free(group[1]):
                reasons["key"] += count
            elif rate_blocked:
                reasons["rate"] += count
            else:
                reasons["concurrency"] += count
        return reasons

    def waiters(self) -> list[Waiter]:
        return [w for queue in self.queues.values() for w in queue]
