"""Fixtures of the cluster tests: real redis-server processes (skipped, with the reason, if Debian's
redis-server is not installed) and a runner for async test bodies on uvloop, as the workers use."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from tests.cluster.redis_servers import MISSING, RedisCluster, RedisServer


def run(coro, timeout: float = 30.0):
    """Run an async test body on a fresh uvloop loop, bounded so a hang fails instead of blocking."""

    async def bounded():
        async with asyncio.timeout(timeout):
            return await coro

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(bounded())


@pytest.fixture
def redis_factory(tmp_path):
    if MISSING:
        pytest.skip(MISSING)
    servers: list[RedisServer] = []

    def start(aof: bool = False) -> RedisServer:
        server = RedisServer(tmp_path / f"redis{len(servers)}", aof=aof)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.kill()


@pytest.fixture
def redis_server(redis_factory):
    return redis_factory()


@pytest.fixture
def redis_cluster(tmp_path):
    if MISSING:
        pytest.skip(MISSING)
    cluster = RedisCluster(tmp_path / "cluster")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.kill()
