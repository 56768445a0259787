"""The per-address connection counts shared by the workers (two limiters over one memfd, no sockets)."""

from __future__ import annotations

import os

from wsd.server.worker.address_limits import AddressLimiter, create_counts_memfd, zero_region


def test_the_limit_holds_across_workers_and_closed_connections_give_their_place_back() -> None:
    fd, secret = create_counts_memfd(bus_slots=2)
    try:
        first, second = AddressLimiter(fd, secret, 3, bus_slot=0), AddressLimiter(fd, secret, 3, bus_slot=1)
        held = [first.admit("10.0.0.1"), second.admit("10.0.0.1"), first.admit("10.0.0.1")]
        assert all(held)
        assert second.admit("10.0.0.1") is None and first.admit("10.0.0.1") is None  # 3 on the server
        assert first.count("10.0.0.1") == 3 == second.count("10.0.0.1")  # a refusal counts nothing
        assert second.admit("10.0.0.2") is not None  # another address has its own count
        first.hold("session a", held[0])
        first.release("session a")
        first.release("session a")  # twice is once
        assert second.admit("10.0.0.1") is not None
        assert second.admit("::1") is not None
    finally:
        os.close(fd)


def test_a_dead_workers_counts_are_forgotten() -> None:
    fd, secret = create_counts_memfd(bus_slots=2)
    try:
        survivor, doomed = AddressLimiter(fd, secret, 2, bus_slot=0), AddressLimiter(fd, secret, 2, bus_slot=1)
        assert doomed.admit("192.0.2.7") and doomed.admit("192.0.2.7")
        assert survivor.admit("192.0.2.7") is None
        zero_region(fd, 1)  # the supervisor reaped bus slot 1's process
        assert survivor.count("192.0.2.7") == 0
        assert survivor.admit("192.0.2.7") is not None
    finally:
        os.close(fd)


def test_collisions_between_many_addresses_do_not_refuse_them_at_a_realistic_limit() -> None:
    # 20,000 addresses with 3 connections each under a limit of 10: a refusal would need an address
    # to share both of its counters with addresses holding 8 more connections.
    fd, secret = create_counts_memfd(bus_slots=1)
    try:
        limiter = AddressLimiter(fd, secret, 10, bus_slot=0)
        addresses = [f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}" for n in range(20_000)]
        refused = sum(limiter.admit(address) is None for address in addresses for _ in range(3))
        assert refused == 0, f"{refused} of 60,000 connections refused by collisions"
    finally:
        os.close(fd)
