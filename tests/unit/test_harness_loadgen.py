"""The load generator's bookkeeping that decides whether a benchmark run lost or reordered anything:
merging the client processes' phase reports, their latencies, and the source addresses."""

from __future__ import annotations

from array import array

import pytest

from harness.loadgen import merge_phase, phase_latencies_us
from harness.net import source_address, source_addresses


def report(connections: int, received: int, complete: int, first_offsets: dict, **extra) -> dict:
    return {
        "connections": connections,
        "received": received,
        "complete_connections": complete,
        "out_of_order": extra.get("out_of_order", 0),
        "first_offsets": first_offsets,
        "disconnected": extra.get("disconnected", 0),
        "disconnect_reasons": extra.get("disconnect_reasons", {}),
        "last_receive_ns": extra.get("last_receive_ns", 0),
        "latencies_us": array("q", extra.get("latencies", [])).tobytes(),
    }


def test_a_complete_phase_checks_clean():
    # First offsets may be keyed by int, or by str in a report read back from JSON: both count.
    reports = [report(2, 20, 2, {"41": 2}, last_receive_ns=5), report(3, 30, 3, {41: 3}, last_receive_ns=9)]
    check = merge_phase(reports, 10, 41)
    assert check == {
        "expected_deliveries": 50, "deliveries": 50, "missing": 0, "extra": 0, "incomplete_connections": 0,
        "out_of_order": 0, "wrong_first_offset": 0, "disconnected": 0, "disconnect_reasons": {},
        "last_receive_ns": 9,
    }  # fmt: skip


def test_lost_reordered_and_wrongly_started_deliveries_are_counted():
    reports = [
        report(
            2,
            17,
            1,
            {"41": 1, "44": 1},
            out_of_order=2,
            disconnected=1,
            disconnect_reasons={"closed by server: 1011 b'ping timeout'": 1},
        ),
        report(1, 11, 1, {"41": 1}, disconnected=1, disconnect_reasons={"closed by server: 1011 b'ping timeout'": 1}),
    ]
    check = merge_phase(reports, 10, 41)
    assert (check["expected_deliveries"], check["deliveries"]) == (30, 28)
    assert (check["missing"], check["extra"], check["incomplete_connections"]) == (2, 0, 1)
    assert (check["out_of_order"], check["wrong_first_offset"], check["disconnected"]) == (2, 1, 2)
    assert check["disconnect_reasons"] == {"closed by server: 1011 b'ping timeout'": 2}


def test_extra_deliveries_are_not_hidden_by_missing_ones_elsewhere():
    check = merge_phase([report(1, 12, 1, {"1": 1})], 10, 1)
    assert (check["missing"], check["extra"]) == (0, 2)


def test_no_first_offset_check_for_per_connection_channels():
    check = merge_phase([report(2, 4, 2, {"1": 1, "7": 1})], 2, None)
    assert check["wrong_first_offset"] == 0


def test_latencies_of_every_process_are_merged_sorted():
    reports = [report(1, 0, 0, {}, latencies=[30, 10]), report(1, 0, 0, {}, latencies=[20, 5])]
    assert phase_latencies_us(reports) == [5, 10, 20, 30]


def test_source_addresses_move_on_every_per_address_connections():
    assert [source_address(i, 3) for i in range(7)] == ["127.0.0.2"] * 3 + ["127.0.0.3"] * 3 + ["127.0.0.4"]
    assert source_addresses(10_000, 5000) == ["127.0.0.2", "127.0.0.3"]
    assert source_addresses(10_001, 5000) == ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    assert source_addresses(0, 5000) == []


def test_source_addresses_stop_at_the_end_of_127_0_0():
    assert source_address(253, 1) == "127.0.0.255"
    with pytest.raises(ValueError, match="past 127.0.0.255"):
        source_address(254, 1)
