"""rediss:// against a real TLS redis-server (a self-signed certificate made by openssl) that needs a
password: the layer connects, publishes and subscribes, and the password shows nowhere."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import time

import pytest
import redis

from harness.net import free_port
from tests.cluster.conftest import run
from tests.cluster.redis_servers import MISSING, REDIS_SERVER
from wsd.server.cluster import ClusterClient, ClusterUnavailable

PASSWORD = "pa:ss@w0rd"


@pytest.fixture
def tls_redis(tmp_path):
    if MISSING or not shutil.which("openssl"):
        pytest.skip(MISSING or "openssl not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=30)  # fmt: skip
    port = free_port()
    proc = subprocess.Popen(
        [REDIS_SERVER, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--tls-cert-file", cert,
         "--tls-key-file", key, "--tls-ca-cert-file", cert, "--tls-auth-clients", "no", "--requirepass", PASSWORD,
         "--save", "", "--dir", tmp_path],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    probe = redis.Redis(host="127.0.0.1", port=port, password=PASSWORD, ssl=True, ssl_ca_certs=str(cert))
    deadline = time.monotonic() + 10
    while True:
        try:
            probe.ping()
            break
        except redis.exceptions.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise
            time.sleep(0.05)
    yield port, cert
    proc.kill()
    proc.wait()


def test_tls_with_password(tls_redis, caplog):
    port, cert = tls_redis
    caplog.set_level(logging.DEBUG, logger="wsd.cluster")
    received = []
    quoted = "pa%3Ass%40w0rd"

    async def body():
        url = f"rediss://:{quoted}@127.0.0.1:{port}/0?ssl_ca_certs={cert}"
        client = ClusterClient([url], timeout_s=1, probe_interval_s=0, on_publication=lambda *a: received.append(a))
        await client.start()
        assert await client.wait_up(5)
        await client.subscribe(["secure"])
        assert (await client.publish("secure", b'"x"')).offset == 1
        while not received:
            await asyncio.sleep(0.01)
        status = client.status()
        assert status["shards"][0]["url"] == f"rediss://:***@127.0.0.1:{port}/0"
        assert PASSWORD not in repr(status) and quoted not in repr(status)
        await client.close()
        # A wrong password is an outage with a clear reason, not a crash.
        wrong = ClusterClient([f"rediss://:nope@127.0.0.1:{port}/0?ssl_ca_certs={cert}"], timeout_s=0.5)
        await wrong.start()
        with pytest.raises(ClusterUnavailable, match="^cluster unavailable: rediss://:\\*\\*\\*@"):
            await wrong.publish("secure", b"1")
        await wrong.close()

    run(body())
    assert all(PASSWORD not in r.getMessage() and quoted not in r.getMessage() for r in caplog.records)
