"""TLS on both ports (issue 10) with self-signed certificates generated here: `wss://` and `https://`
on the WebSocket port, `https://` on the publish API, `wsd ctl publish` through the admin socket,
and a renewed certificate served after a rolling reload (a broken one refused, the old one kept)."""

from __future__ import annotations

import json
import socket
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from websockets.exceptions import InvalidStatus

from harness.wsd_process import WsdProcess
from tests import auth_material
from tests.tls_websocket import TlsWebSocket

API_KEY = "api-key-for-tls-tests-0123456789"


def new_certificate(name: str) -> tuple[bytes, bytes, bytes]:
    """(certificate PEM, key PEM, certificate DER) for `name` and 127.0.0.1, with a fresh key."""
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = auth_material.self_signed_certificate(key, name)
    return (auth_material.certificate_pem(certificate), auth_material.private_pem(key),
            certificate.public_bytes(serialization.Encoding.DER))  # fmt: skip


@pytest.fixture(scope="module")
def certificates():
    # Two names: a client's trust store finds a self-signed certificate's issuer by its name.
    return {"first": new_certificate("localhost"), "renewed": new_certificate("wsd.localhost")}


@pytest.fixture(scope="module")
def tls(tmp_path_factory, certificates):
    directory = tmp_path_factory.mktemp("tls")
    cert, key, _ = certificates["first"]
    files = {
        "cert": auth_material.write(directory / "cert.pem", cert),
        "key": auth_material.write(directory / "key.pem", key),
        "api_key": auth_material.write(directory / "api-key", API_KEY),
        "secret": auth_material.write(directory / "secret", auth_material.SECRET),
    }
    server = WsdProcess(
        directory / "wsd", workers=2,
        flags=["--tls-cert", files["cert"], "--tls-key", files["key"], "--api-tls-cert", files["cert"],
               "--api-tls-key", files["key"], "--api-key-file", files["api_key"], "--auth-secret-file",
               files["secret"], "--drain-window", "1"],
    )  # fmt: skip
    # The clients trust both certificates: which one the server presents is checked by fingerprint.
    trusted = (certificates["first"][0] + certificates["renewed"][0]).decode()
    server.ws_ssl = ssl.create_default_context(cadata=trusted)
    server.api_ssl = ssl.create_default_context(cadata=trusted)
    server.api_key = API_KEY
    server.files = files
    server.start()
    yield server
    server.kill()


def presented_certificate(server: WsdProcess, port: int) -> bytes:
    """The DER certificate a new TLS handshake with `port` gets."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with server.ws_ssl.wrap_socket(raw, server_hostname="127.0.0.1") as tls_socket:
            return tls_socket.getpeercert(binary_form=True)


def token(**claims) -> str:
    return auth_material.hs256({"sub": "42", "exp": int(time.time()) + 60, **claims})


def test_wss_and_https_on_the_websocket_port_and_https_on_the_api(tls):
    assert tls.url.startswith("wss://") and tls.api_url.startswith("https://")
    with TlsWebSocket(f"{tls.url}?token={token(subs=['news'])}", tls.ws_ssl) as ws:
        ws.send(json.dumps({"op": "sub", "ch": "news", "id": 1}))
        assert json.loads(ws.recv(timeout=10))["op"] == "ok"
        offset = tls.publish("news", {"over": "https"})
        assert json.loads(ws.recv(timeout=10)) == {"op": "msg", "ch": "news", "off": offset, "data": {"over": "https"}}
        result = json.loads(tls.ctl("--json", "publish", "news", '"via ctl"').stdout)  # TLS and the API key
        assert result["offset"] == offset + 1
        assert json.loads(ws.recv(timeout=10))["data"] == "via ctl"
    assert tls.http_get("/healthz") == (200, b"ok")
    status, body = tls.http_get("/wsd.js")
    assert status == 200 and b"export function connect" in body
    # The handshake's decisions are the same over TLS.
    with pytest.raises(InvalidStatus) as refused:
        TlsWebSocket(f"{tls.url}?token=bad", tls.ws_ssl)
    assert refused.value.response.status_code == 401


def test_plain_text_clients_get_no_service_from_tls_ports(tls):
    for port in (tls.port, tls.api_port):
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).read()
    assert all(w["restarts"] == 0 for w in tls.status()["workers"])


def test_a_broken_renewal_is_refused_and_a_good_one_is_served_after_a_reload(tls, certificates):
    first_der = certificates["first"][2]
    assert presented_certificate(tls, tls.port) == first_der
    assert presented_certificate(tls, tls.api_port) == first_der
    renewed_cert, renewed_key, renewed_der = certificates["renewed"]
    # Half a renewal: the new certificate with the old key. The reload is refused with the reason and
    # the running workers keep serving the old certificate.
    Path(tls.files["cert"]).write_bytes(renewed_cert)
    refused = tls.ctl("reload", check=False)
    assert refused.returncode != 0
    assert "reload refused" in refused.stderr and "is not the key of the certificate" in refused.stderr, refused.stderr
    assert presented_certificate(tls, tls.port) == first_der
    # The whole renewal: reload, and new handshakes get the new certificate, on both ports.
    Path(tls.files["key"]).write_bytes(renewed_key)
    old_pids = set(tls.worker_pids())
    tls.ctl("reload")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = tls.status()
        pids = {worker["pid"] for worker in status["workers"]}
        if status["supervisor"]["state"] == "running" and not pids & old_pids:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"reload not done: {tls.status()}")
    assert presented_certificate(tls, tls.port) == renewed_der
    assert presented_certificate(tls, tls.api_port) == renewed_der
    with TlsWebSocket(f"{tls.url}?token={token()}", tls.ws_ssl) as ws:
        ws.send(json.dumps({"op": "ping", "id": 1}))
        assert json.loads(ws.recv(timeout=10))["op"] == "ok"
    assert tls.publish("news", "after the renewal") >= 1
