"""`wsd balancer` end to end in network namespaces: spread, a killed backend, a draining backend and
`pick()` against where the kernel (or the proxy) actually sent each connection. Every mode runs the
same suite."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time

import pytest
from netlab import CLIENT_IPS, PORT, REPO, VIP
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidMessage, InvalidStatus

from wsd.balancer.table import LookupTable

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

SPREAD_CONNECTIONS = 1500  # 500 per backend: a 15% band is ~4 standard deviations of hashing noise


async def close_all(sessions) -> None:
    await asyncio.gather(*(session.websocket.close() for session in sessions), return_exceptions=True)


async def alive(session, timeout: float = 3.0) -> bool:
    try:
        pong = await session.websocket.ping()
        await asyncio.wait_for(pong, timeout)
        return True
    except (ConnectionClosed, TimeoutError, OSError):
        return False


def test_connections_spread_evenly_over_the_backends(front):
    front.start_balancer()

    async def scenario():
        sessions = await front.open_sessions(SPREAD_CONNECTIONS)
        try:
            await asyncio.sleep(0.3)
            return front.connection_counts()
        finally:
            await close_all(sessions)

    counts = asyncio.run(scenario())
    average = SPREAD_CONNECTIONS / 3
    print(f"{front.mode}: connections per backend {counts}")
    assert sum(counts) >= SPREAD_CONNECTIONS - 3, counts
    for count in counts:
        assert abs(count - average) <= 0.15 * average, f"{front.mode}: {counts} not within 15% of {average:.0f}"
    shares = [entry["share"] for entry in front.status()["backends"]]
    assert all(abs(share - 1 / 3) < 0.02 for share in shares), shares


def test_killed_backend_is_bypassed_within_3s_and_survivors_keep_their_connections(front):
    front.start_balancer()

    async def scenario():
        sessions = await front.open_sessions(150)
        try:
            await asyncio.sleep(0.3)
            before = front.connection_counts()
            where = front.backend_of_sources() if front.mode != "proxy" else {}
            front.kill_backend(0)
            killed_at = time.monotonic()
            # New connections: keep opening until 20 in a row succeed.
            in_a_row = 0
            attempt = 0
            while in_a_row < 20:
                assert time.monotonic() - killed_at < 10, "new connections still fail 10s after the kill"
                attempt += 1
                try:
                    session = await front.open_session(CLIENT_IPS[attempt % len(CLIENT_IPS)], timeout=1.0)
                    await session.websocket.close()
                    in_a_row += 1
                except (OSError, TimeoutError, ConnectionClosed, InvalidHandshake):
                    in_a_row = 0
                    await asyncio.sleep(0.05)
            recovered_s = time.monotonic() - killed_at
            states = await asyncio.gather(*(alive(session) for session in sessions))
            return before, where, recovered_s, states, sessions
        finally:
            await close_all(sessions)

    before, where, recovered_s, states, sessions = asyncio.run(scenario())
    print(f"{front.mode}: before kill {before}, new connections all succeed {recovered_s:.2f}s after the kill")
    assert recovered_s <= 3.0, f"{front.mode}: new connections reached the others only after {recovered_s:.2f}s"
    survivors_expected = before[1] + before[2]
    assert sum(states) == survivors_expected, f"{sum(states)} alive, expected {survivors_expected} ({before})"
    if where:  # ecmp, nft: check each survivor individually
        for session, up in zip(sessions, states, strict=True):
            assert up == (where.get(tuple(session.source)) != 0), f"{session.source} on {where.get(session.source)}"
    # The health checks remove it too (in proxy mode new connections may already have gone
    # around it before the K-th failed check).
    front.wait_until(
        lambda: any(
            change["backend"] == front.backend_names[0] and change["event"] == "removed"
            for change in front.status()["changes"]
        ),
        timeout=5,
        what="the killed backend removed by the health checks",
    )


def start_drain(front, window_s: float) -> None:
    """Put backend b1 into drain: the stand-in on SIGUSR1, real wsd through `wsd ctl drain`."""
    if front.backend_kind == "standin":
        os.kill(front.backend_processes[0].pid, signal.SIGUSR1)
        return
    result = subprocess.run(
        [str(REPO / ".venv/bin/wsd"), "ctl", "--admin-socket", str(front.lab.workdir / "b1.sock"), "drain",
         "--window", str(window_s)], capture_output=True, text=True, timeout=20,
    )
    if result.returncode != 0:
        pytest.skip(f"`wsd ctl drain` is not available in wsd serve yet ({result.stderr.strip()[:200]}); "
                    "the stand-in variant covers the front's drain behaviour")


def test_draining_backend_gets_no_new_sessions_and_its_clients_move_without_resets(front):
    front.start_balancer("--drain-window", "30")

    async def reconnect(source_ip: str):
        for _ in range(50):  # a 503 from the draining backend: retry on a new source port
            try:
                return await front.open_session(source_ip, timeout=2.0)
            except InvalidStatus as error:
                assert error.response.status_code == 503
            except (ConnectionRefusedError, ConnectionResetError, InvalidMessage):
                # Real wsd exits when its drain window ends; until the front's health checks
                # remove it, a flow hashed to it is refused (or, already in its accept queue when
                # it exited, reset), and the client retries (as wsd.js does).
                await asyncio.sleep(0.1)
        raise AssertionError("could not reconnect through the VIP in 50 tries")

    async def scenario():
        sessions = await front.open_sessions(90)
        await asyncio.sleep(0.3)
        on_b1 = front.connection_counts()[0]
        assert on_b1 > 0, "no session landed on b1"
        start_drain(front, 3.0)
        # b1 closes its own clients (a close frame each); the front must not reset any of them.
        deadline = time.monotonic() + 20
        while sum(session.websocket.close_code is not None for session in sessions) < on_b1:
            assert time.monotonic() < deadline, "the draining backend's clients were not closed within 20s"
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # nobody else may close
        closed = [session for session in sessions if session.websocket.close_code is not None]
        staying = [session for session in sessions if session.websocket.close_code is None]
        close_codes = [session.websocket.close_code for session in closed]
        moved = [await reconnect(session.source[0]) for session in closed]
        fresh = [await reconnect(CLIENT_IPS[index % len(CLIENT_IPS)]) for index in range(60)]
        await asyncio.sleep(0.3)
        counts_after = front.connection_counts()
        states = await asyncio.gather(*(alive(session) for session in staying + moved + fresh))
        await close_all(staying + moved + fresh)
        return on_b1, close_codes, counts_after, states, [session.hello_backend for session in moved + fresh]

    on_b1, close_codes, counts_after, states, hellos = asyncio.run(scenario())
    print(f"{front.mode}/{front.backend_kind}: {on_b1} clients of b1 closed with {sorted(set(close_codes))}; "
          f"after reconnecting, connections per backend {counts_after}")
    assert len(close_codes) == on_b1
    assert 1006 not in close_codes, f"a draining connection was cut without a close frame: {close_codes}"
    assert counts_after[0] == 0, f"b1 got new sessions while draining: {counts_after}"
    assert "b1" not in hellos
    assert all(states), "a connection broke during the drain"
    status = front.status()
    # Real wsd exits once its drain window is over, so by now it may be down rather than draining.
    expected_health = ("draining",) if front.backend_kind == "standin" else ("draining", "down")
    assert status["backends"][0]["health"] in expected_health
    events = [(change["backend"], change["event"]) for change in status["changes"]]
    assert (front.backend_names[0], "draining") in events
    # nft/proxy drop b1 from the table at once; ecmp keeps its buckets until it reports no clients
    # (or its window passes). Either way it is out of the table once every client has left.
    if front.backend_kind == "standin" or front.mode != "ecmp":
        front.wait_until(lambda: not front.status()["backends"][0]["in_table"], timeout=5, what="b1 out of the table")


@pytest.mark.parametrize("standin_front", ["nft", "proxy"], indirect=True)
def test_pick_agrees_with_where_each_connection_landed(standin_front):
    front = standin_front
    front.start_balancer()
    table = LookupTable.build(front.backend_names)
    names = {f"b{index}": name for index, name in enumerate(front.backend_names, start=1)}

    async def scenario():
        sessions = await front.open_sessions(300)
        await close_all(sessions)
        return sessions

    sessions = asyncio.run(scenario())
    mismatches = [
        (session.source, names[session.hello_backend], table.pick(*session.source, VIP, PORT))
        for session in sessions
        if names[session.hello_backend] != table.pick(*session.source, VIP, PORT)
    ]
    assert not mismatches, f"{len(mismatches)}/{len(sessions)} landed elsewhere than pick() says: {mismatches[:5]}"


@pytest.mark.parametrize("standin_front", ["proxy"], indirect=True)
def test_proxy_routes_a_room_to_one_backend(standin_front):
    front = standin_front
    front.start_balancer("--route-key", "room")
    table = LookupTable.build(front.backend_names)

    async def scenario():
        homes = {}
        for room in ("123", "lobby", "chess-9"):
            sessions = [
                await front.open_session(CLIENT_IPS[index], path=f"/ws?room={room}") for index in range(12)
            ]
            homes[room] = {session.hello_backend for session in sessions}
            await close_all(sessions)
        return homes

    homes = asyncio.run(scenario())
    for room, backends in homes.items():
        assert len(backends) == 1, f"room {room} spread over {backends}"
        expected = table.pick_key(room)
        assert f"{front.backend_names[int(next(iter(backends))[1]) - 1]}" == expected


def test_ecmp_and_nft_programs_are_removed_on_exit(front):
    if front.mode == "proxy":
        pytest.skip("proxy mode programs nothing in the kernel")
    front.start_balancer()
    if front.mode == "nft":
        assert "dnat" in front.lab.ns(front.lab.front, "nft", "list", "ruleset").stdout
    else:
        assert "nhid" in front.lab.ns(front.lab.front, "ip", "route", "show", f"{VIP}/32").stdout
    front.balancer.send_signal(signal.SIGTERM)
    front.balancer.wait(timeout=10)
    assert "dnat" not in front.lab.ns(front.lab.front, "nft", "list", "ruleset", check=False).stdout
    assert front.lab.ns(front.lab.front, "ip", "route", "show", f"{VIP}/32").stdout.strip() == ""


def test_draining_standin_backend_gets_no_new_sessions_and_its_clients_move_without_resets(standin_drain_front):
    # The same scenario against the stand-in backend, whose drain switch always exists.
    test_draining_backend_gets_no_new_sessions_and_its_clients_move_without_resets(standin_drain_front)
