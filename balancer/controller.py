"""The control loop of `wsd balancer`: probe every backend, decide which belong in the table, and
push that set into the data path. Every change is logged with its reason and kept for `status`.

Draining is decided per mode, because what "remove from the table" does to live connections
depends on whether the data path keeps per-connection state:

* `nft`, `proxy`: conntrack (or the proxy's own sockets) pins established flows, so a draining
  backend leaves the table at once; only new connections go elsewhere.
* `ecmp`: the front is stateless; removing the nexthop would send the draining backend's live
  packets to other backends, which answer with resets. So it keeps its buckets while the backend
  refuses new handshakes itself (503), and leaves when it reports no clients or its drain window
  has passed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import asdict, dataclass

from wsd.balancer.config import BalancerConfig, Endpoint
from wsd.balancer.health import BackendHealth, HealthState, ProbeResult, probe

log = logging.getLogger("wsd.balancer")


@dataclass(frozen=True)
class Change:
    """One entry of the change log shown by `status`."""

    at: float
    backend: str
    event: str  # "up", "down", "draining", "added", "removed"
    reason: str


class Balancer:
    """Health verdicts in, table membership out."""

    def __init__(self, config: BalancerConfig, data_plane) -> None:
        self.config = config
        self.data_plane = data_plane
        self.health = {backend: BackendHealth(config.fail_after, config.rise_after) for backend in config.backends}
        self.drain_started: dict[Endpoint, float] = {}
        self.in_table: set[Endpoint] = set()
        self.changes: deque[Change] = deque(maxlen=500)
        self.started_at = time.time()
        self.rounds = 0

    def record(self, backend: Endpoint, event: str, reason: str) -> None:
        change = Change(time.time(), str(backend), event, reason)
        self.changes.append(change)
        log.info("backend %s %s: %s", backend, event, reason)

    def membership(self, backend: Endpoint, now: float) -> tuple[bool, str]:
        """Whether `backend` belongs in the table now, and why."""
        health = self.health[backend]
        if health.state is HealthState.UP:
            return True, "healthy"
        if health.state is HealthState.DOWN:
            return False, (health.last_result.describe() if health.last_result else "not checked yet")
        # Draining.
        if self.config.mode != "ecmp":
            return False, f"draining: new connections go elsewhere, {self.config.mode} keeps established flows pinned"
        clients = health.last_result.clients if health.last_result else None
        if clients == 0:
            return False, "draining and it reports no clients left"
        waited = now - self.drain_started.get(backend, now)
        if waited >= self.config.drain_window_s:
            return False, f"draining for {waited:.0f}s, past the {self.config.drain_window_s:g}s drain window"
        return True, "draining: keeps its buckets so its live connections are not reset (stateless ecmp)"

    def observe(self, backend: Endpoint, result: ProbeResult, now: float) -> None:
        transition = self.health[backend].observe(result)
        if transition is None:
            return
        state, reason = transition
        if state is HealthState.DRAINING:
            self.drain_started.setdefault(backend, now)
        else:
            self.drain_started.pop(backend, None)
        self.record(backend, state.value, reason)

    async def reconcile(self, now: float) -> None:
        """Push the wanted set to the data path and log who joined or left, with the reason."""
        decisions = {backend: self.membership(backend, now) for backend in self.config.backends}
        wanted = {backend for backend, (member, _) in decisions.items() if member}
        if wanted == self.in_table and self.rounds > 1:
            return
        await self.data_plane.apply(sorted(wanted))
        for backend in sorted(wanted - self.in_table):
            self.record(backend, "added", decisions[backend][1])
        for backend in sorted(self.in_table - wanted):
            self.record(backend, "removed", decisions[backend][1])
        self.in_table = wanted

    async def check_round(self) -> None:
        results = await asyncio.gather(
            *(probe(backend, self.config.health_path, self.config.health_timeout_s) for backend in self.config.backends)
        )
        now = time.monotonic()
        for backend, result in zip(self.config.backends, results, strict=True):
            self.observe(backend, result, now)
        self.rounds += 1
        await self.reconcile(now)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                await self.check_round()
            except Exception:  # a failed kernel update must not stop health checking; retry next round
                log.exception("balancer round failed; retrying in %gs", self.config.health_interval_s)
            remaining = self.config.health_interval_s - (time.monotonic() - started)
            try:
                await asyncio.wait_for(stop.wait(), timeout=max(remaining, 0.0))
            except TimeoutError:
                pass

    def status(self) -> dict:
        shares = self.data_plane.shares()
        backends = []
        for backend in self.config.backends:
            health = self.health[backend]
            member, reason = self.membership(backend, time.monotonic())
            entry = {
                "backend": str(backend),
                "health": health.state.value,
                "in_table": backend in self.in_table,
                "share": round(shares.get(str(backend), 0.0), 4),
                "why": reason,
                "last_check": health.last_result.describe() if health.last_result else None,
                "failures_in_a_row": health.consecutive_failures,
            }
            connections = getattr(self.data_plane, "connections", None)
            if connections is not None:
                entry["connections"] = connections.get(str(backend), 0)
            backends.append(entry)
        return {
            "mode": self.config.mode,
            "vip": str(self.config.vip),
            "uptime_s": round(time.time() - self.started_at, 1),
            "health_rounds": self.rounds,
            "backends": backends,
            "changes": [asdict(change) for change in list(self.changes)[-50:]],
        }
