"""One redis-py asyncio connection to one Redis server, configured for the cluster layer: no
automatic retries (a refused publish must never be sent later), our own timeouts, hiredis parsing."""

from __future__ import annotations

from redis.asyncio.connection import Connection, SSLConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from wsd.server.cluster.urls import RedisTarget


def make_connection(target: RedisTarget, *, connect_timeout_s: float, client_name: str | None = None) -> Connection:
    """A not yet connected Connection to `target`. Reads have no socket timeout: callers bound each
    request with asyncio.timeout, and a pub/sub connection waits for pushes indefinitely."""
    kwargs: dict = {
        "host": target.host,
        "port": target.port,
        "username": target.username,
        "password": target.password,
        "db": target.db,
        "client_name": client_name,
        "socket_connect_timeout": connect_timeout_s,
        "socket_timeout": None,
        "socket_keepalive": True,
        "retry": Retry(NoBackoff(), 0),
        # RESP2: pub/sub messages arrive as plain replies that read_response() returns (redis-py 8
        # defaults to RESP3, where its parser would divert them to push handlers).
        "protocol": 2,
    }
    if target.tls:
        options = dict(target.tls_options)
        if "ssl_check_hostname" in options:
            options["ssl_check_hostname"] = options["ssl_check_hostname"].lower() in ("1", "true", "yes")
        return SSLConnection(**kwargs, **options)
    return Connection(**kwargs)
