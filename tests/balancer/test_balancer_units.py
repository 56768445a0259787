"""Balancer pieces without a network: config checks, the health state machine, per-mode drain
policy and the nft update batch."""

import pytest

from wsd.balancer.config import ConfigError, build_config
from wsd.balancer.controller import Balancer
from wsd.balancer.health import BackendHealth, HealthState, ProbeResult
from wsd.balancer.nft import update_batch
from wsd.balancer.proxy import route_key_of
from wsd.balancer.table import LookupTable

OK, DRAINING, REFUSED = ProbeResult(200), ProbeResult(503), ProbeResult(None, "ConnectionRefusedError")


def config(**overrides):
    flags = {"vip": "10.99.0.1:8080", "backends": ["10.0.0.1:8080", "10.0.0.2:8080"], **overrides}
    return build_config({}, flags)


def test_config_errors_say_what_to_do():
    with pytest.raises(ConfigError, match="IPv4:PORT"):
        config(vip="nonsense")
    with pytest.raises(ConfigError, match="must listen on the VIP port"):
        config(backends=["10.0.0.1:9000"])
    with pytest.raises(ConfigError, match="needs --mode proxy"):
        config(route_key="room")
    assert config(mode="nft", backends=["10.0.0.1:9000"]).backends[0].port == 9000


def test_k_failures_in_a_row_take_a_backend_down_and_one_pass_brings_it_back():
    health = BackendHealth(fail_after=2, rise_after=1)
    assert health.observe(OK)[0] is HealthState.UP
    assert health.observe(REFUSED) is None
    assert health.observe(REFUSED)[0] is HealthState.DOWN
    assert health.observe(OK)[0] is HealthState.UP


def test_503_means_draining_at_once():
    health = BackendHealth(fail_after=3, rise_after=2)
    health.observe(OK)
    assert health.observe(DRAINING) == (HealthState.DRAINING, "healthz answered 503 (draining)")


class RecordingDataPlane:
    def __init__(self):
        self.applied = []

    async def apply(self, wanted):
        self.applied.append([str(backend) for backend in wanted])

    def shares(self):
        return {}


@pytest.mark.parametrize("mode", ["ecmp", "nft", "proxy"])
def test_a_draining_backend_leaves_the_table_when_its_mode_allows(mode):
    import asyncio

    balancer = Balancer(config(mode=mode, drain_window_s=10), RecordingDataPlane())
    first, second = balancer.config.backends
    for backend in (first, second):
        balancer.observe(backend, OK, now=0)
    asyncio.run(balancer.reconcile(0))
    balancer.observe(first, DRAINING, now=1)
    asyncio.run(balancer.reconcile(1))
    # Stateless ecmp must keep the draining backend's buckets (its live flows would be reset);
    # conntrack (nft) and the proxy keep established flows pinned, so they drop it at once.
    assert (first in balancer.in_table) == (mode == "ecmp")
    balancer.observe(first, ProbeResult(503, clients=0), now=2)
    asyncio.run(balancer.reconcile(2))
    assert first not in balancer.in_table
    assert any(change.event == "removed" and change.reason for change in balancer.changes)


def test_ecmp_drain_window_bounds_the_wait():
    import asyncio

    balancer = Balancer(config(drain_window_s=5), RecordingDataPlane())
    first = balancer.config.backends[0]
    balancer.observe(first, OK, now=0)
    balancer.observe(first, DRAINING, now=1)
    asyncio.run(balancer.reconcile(3))
    assert first in balancer.in_table
    asyncio.run(balancer.reconcile(6.5))
    assert first not in balancer.in_table


def test_nft_batch_rewrites_only_changed_buckets():
    before = LookupTable.build(["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"], 101)
    after = LookupTable.build(["10.0.0.1:80", "10.0.0.2:80"], 101)
    batch = update_batch("t", before, after)
    deleted = batch["nftables"][0]["delete"]["element"]["elem"]
    assert sorted(deleted) == before.changed_slots(after)
    departed = [bucket for bucket, owner in enumerate(before.slots) if owner == "10.0.0.3:80"]
    # All of the departed backend's buckets are rewritten, plus Maglev's few extra moves.
    assert set(departed) <= set(deleted) and len(deleted) - len(departed) <= 0.1 * len(departed)


def test_route_key_is_read_from_the_handshake_path():
    head = b"GET /ws?room=123&x=1 HTTP/1.1\r\nHost: a\r\n\r\n"
    assert route_key_of(head, "room") == "123"
    assert route_key_of(head, "user") is None


def test_status_table_shows_health_share_and_changes():
    from wsd.balancer.admin import format_status

    text = format_status({
        "mode": "nft", "vip": "10.99.0.1:8080", "uptime_s": 3.0, "health_rounds": 3,
        "backends": [{"backend": "10.0.0.1:8080", "health": "down", "in_table": False, "share": 0.0,
                      "why": "ConnectionRefusedError"}],
        "changes": [{"at": 0.0, "backend": "10.0.0.1:8080", "event": "removed", "reason": "healthz failed 2x"}],
    })
    assert "10.0.0.1:8080" in text and "removed" in text and "ConnectionRefusedError" in text
