"""What each wsd process imports: a plain server's supervisor and workers stay without the modules
only a feature needs (TLS, tokens, metrics, --cluster, the client side of picows), and switching a
feature on still brings in what it needs. Every module a process holds costs its memory for good,
once per process (issue 13: the per-process cost; bench/process_memory.py measures it).

Each process of the server under test writes its sys.modules to a file when it exits: a
sitecustomize.py on PYTHONPATH (the workers run `python -P`, which leaves PYTHONPATH alone). The server
is used first (a subscription, publishes over the API, a second connection, `wsd ctl status`), so
what a process imports on first use counts too. (`wsd ctl publish` does import http.client, and with
it ssl, into the supervisor: on demand.)
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from websockets.sync.client import connect

from harness.wsd_process import WsdProcess
from tests import auth_material
from tests.tls_websocket import TlsWebSocket

DUMP_MODULES = """
import atexit, json, os, sys

def _dump_modules():
    path = os.path.join({directory!r}, f"modules-{{os.getpid()}}.json")
    loaded = sorted(name for name, module in sys.modules.items() if module is not None)
    with open(path, "w") as f:
        json.dump({{"argv": sys.argv, "modules": loaded}}, f)

atexit.register(_dump_modules)
"""

# Never in a plain process: each is a feature's (or a client's) and costs from ~0.5 to ~7 MiB.
FEATURE_MODULES = {"jwt", "redis", "prometheus_client", "cryptography", "hiredis"}
NOT_IN_A_PLAIN_SUPERVISOR = FEATURE_MODULES | {
    "asyncio", "ssl", "_ssl", "_hashlib", "hashlib", "hmac", "secrets", "http.client", "email",
    "importlib.metadata", "statistics", "uvloop", "picows",
}  # fmt: skip
NOT_IN_A_PLAIN_WORKER = FEATURE_MODULES | {
    "python_socks", "aiofastnet", "picows.api", "picows.proxy", "importlib.metadata", "email", "argparse",
    "tomllib", "http.client", "wsd.server.control.cli", "wsd.server.cluster.broker", "wsd.server.metrics",
}  # fmt: skip


def run_and_collect(directory: Path, monkeypatch, flags: list[str], use, ws_ssl=None) -> dict[str, list[set[str]]]:
    """Start wsd with `flags`, call `use(server)`, stop it; the modules of its supervisor and workers."""
    site = directory / "site"
    site.mkdir(parents=True)
    (site / "sitecustomize.py").write_text(DUMP_MODULES.format(directory=str(site)))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    server = WsdProcess(directory / "wsd", workers=2, flags=flags)
    server.ws_ssl = ws_ssl
    server.start()
    try:
        use(server)
    finally:
        server.kill()
    assert server.proc.returncode == 0, server.read_log()
    found: dict[str, list[set[str]]] = {"supervisor": [], "worker": []}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        dumps = [json.loads(path.read_text()) for path in site.glob("modules-*.json")]
        worker_main = os.path.join("worker", "__main__.py")
        found = {
            "supervisor": [set(d["modules"]) for d in dumps if "serve" in d["argv"]],
            "worker": [set(d["modules"]) for d in dumps if d["argv"][0].endswith(worker_main)],
        }
        if len(found["supervisor"]) == 1 and len(found["worker"]) == 2:
            return found
        time.sleep(0.1)
    raise AssertionError(f"not every process wrote its modules: {found}\n{server.read_log()}")


def subscribe_and_publish(server: WsdProcess, url: str, ssl_context=None) -> None:
    for round_ in range(2):  # two connections: each worker most likely gets one
        # Over TLS, not websockets' sync client: its reading thread races the caller's writes on
        # one SSLSocket (tests/tls_websocket.py).
        with (TlsWebSocket(url, ssl_context) if ssl_context else connect(url, open_timeout=10)) as ws:
            ws.send(json.dumps({"op": "sub", "ch": "news", "id": 1}))
            assert json.loads(ws.recv(timeout=10))["op"] == "ok"
            offset = server.publish("news", {"round": round_})
            assert json.loads(ws.recv(timeout=10))["off"] == offset
    assert server.http_get("/healthz") == (200, b"ok")
    assert len(server.status()["workers"]) == 2  # `wsd ctl status`: the supervisor asks the workers


def test_a_plain_server_imports_no_feature_and_no_client_side(tmp_path, monkeypatch):
    found = run_and_collect(tmp_path, monkeypatch, [], lambda server: subscribe_and_publish(server, server.url))
    [supervisor] = found["supervisor"]
    assert "wsd.server.control.supervisor" in supervisor  # the dump is the supervisor's
    assert sorted(supervisor & NOT_IN_A_PLAIN_SUPERVISOR) == []
    for worker in found["worker"]:
        # uvloop imports ssl whatever wsd does; picows's core is there, its client side is not.
        assert {"wsd.server.worker.process", "ssl", "picows.picows", "picows.common"} <= worker
        assert sorted(worker & NOT_IN_A_PLAIN_WORKER) == []


def test_tls_tokens_and_metrics_still_import_what_they_need(tmp_path, monkeypatch):
    key = auth_material.ec_private_key()
    certificate = auth_material.self_signed_certificate(key, "localhost")
    cert = auth_material.write(tmp_path / "cert.pem", auth_material.certificate_pem(certificate))
    private = auth_material.write(tmp_path / "key.pem", auth_material.private_pem(key))
    secret = auth_material.write(tmp_path / "secret", auth_material.SECRET)
    client_context = ssl.create_default_context(cadata=auth_material.certificate_pem(certificate).decode())

    def use(server: WsdProcess) -> None:
        token = auth_material.hs256({"sub": "42", "exp": int(time.time()) + 60, "subs": ["news"]})
        subscribe_and_publish(server, f"{server.url}?token={token}", client_context)
        assert "offset" in json.loads(server.ctl("--json", "publish", "news", '"via ctl"').stdout)
        with urllib.request.urlopen(f"{server.api_url}/metrics", timeout=10) as response:
            status, body = response.status, response.read()
        assert status == 200 and b'wsd_build_info{python="' in body and b'version="' in body

    flags = ["--tls-cert", cert, "--tls-key", private, "--auth-secret-file", secret]
    found = run_and_collect(tmp_path, monkeypatch, flags, use, client_context)
    [supervisor] = found["supervisor"]
    assert {"ssl", "_ssl"} <= supervisor  # it checks the certificate before starting workers
    for worker in found["worker"]:
        assert {"ssl", "jwt"} <= worker
    assert any({"prometheus_client", "importlib.metadata"} <= worker for worker in found["worker"])


@pytest.mark.parametrize("name", ["ws_connect", "WSFrame"])
def test_a_worker_that_asks_picows_for_more_gets_all_of_it(name):
    """wsd.server.worker.picows_core: the package becomes the whole of picows on first use."""
    code = (
        "import sys\n"
        "from wsd.server.worker.picows_core import import_picows_core\n"
        "import_picows_core()\n"
        "import picows.picows\n"
        "assert 'picows.api' not in sys.modules and 'python_socks' not in sys.modules\n"
        f"from picows import {name}\n"
        "import picows\n"
        "assert 'picows.api' in sys.modules and picows.ws_connect and picows.__version__\n"
        "assert picows.WSFrame is picows.picows.WSFrame\n"
    )
    result = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
