"""Fixtures that run wsd as a user would: `wsd serve` as a real subprocess, driven from outside."""

from __future__ import annotations

import pytest

from harness.wsd_process import WsdProcess


@pytest.fixture
def wsd_factory(tmp_path):
    """Start wsd servers with given flags; all are stopped at the end of the test."""
    started: list[WsdProcess] = []

    def start(*flags: str, workers: int = 2, wait: bool = True) -> WsdProcess:
        server = WsdProcess(tmp_path / f"wsd{len(started)}", workers=workers, flags=list(flags))
        started.append(server)
        server.start(wait=wait)
        return server

    yield start
    for server in started:
        server.kill()


@pytest.fixture
def wsd(wsd_factory):
    return wsd_factory(workers=4)
