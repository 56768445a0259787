"""Issue 10 against real `wsd serve` processes and real clients: connection tokens (HS256 and ES256),
channel decisions both ways, refused tokens, refresh and expiry, the publish API's key, protected
mode, Origin, `from` on client publishes, the rate limit and its close.

A watcher on each server receives an API stream the whole time; it must end with every message, in
order, and no worker may have restarted: no refused request disturbs another client. Servers are
shared within the module (each start costs seconds). TLS is in tests/test_tls.py.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from harness.net import free_port
from harness.wsd_process import WSD, WsdProcess
from tests import auth_material
from tests.raw_ws import RawWebSocket

ISSUER = "https://app.example.com"
API_KEY = "api-key-for-tests-0123456789abcdef"
HS_ORIGINS = "https://app.example.com,http://localhost:3000"


# ---- servers and tokens --------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    directory = tmp_path_factory.mktemp("keys")
    certificate = auth_material.self_signed_certificate(auth_material.ec_private_key(), "tokens.example.com")
    return {
        # Written as `echo` and secret stores write them: the trailing newline is not the secret's.
        "secret_file": auth_material.write(directory / "secret", auth_material.SECRET + "\n"),
        # ES256 from a certificate (its public key is used).
        "certificate": auth_material.write(directory / "tokens.pem", auth_material.certificate_pem(certificate)),
        "certificate_pem": auth_material.certificate_pem(certificate),
        "api_key_file": auth_material.write(directory / "api-key", API_KEY + "\n"),
        "directory": directory,
    }


def _start(tmp_path_factory, name: str, *flags: str, workers: int = 2) -> WsdProcess:
    server = WsdProcess(tmp_path_factory.mktemp(name), workers=workers, flags=list(flags))
    server.start()
    return server


@pytest.fixture(scope="module")
def hs(tmp_path_factory, keys):
    """HS256 from a secret file; public channels; an Origin list; the API behind a key."""
    server = _start(
        tmp_path_factory, "hs", "--auth-secret-file", keys["secret_file"], "--public-channels", "news,public:*",
        "--auth-timeout", "1", "--allowed-origins", HS_ORIGINS, "--api-key-file", keys["api_key_file"],
    )  # fmt: skip
    server.api_key = API_KEY
    server.mint = lambda claims: auth_material.hs256(claims)
    watcher = Watcher(server, auth_material.hs256(claims(sub="watcher", ttl=600, subs=["watch"])))
    yield server
    watcher.finish()
    assert_no_restarts(server)
    server.kill()


@pytest.fixture(scope="module")
def es(tmp_path_factory, keys):
    """ES256 from a certificate, with audience and issuer checked; a config file's [auth] table."""
    config = keys["directory"] / "es.toml"
    config.write_text(
        f'public_channels = ["news", "public:*"]\n[auth]\npublic_key_file = "{keys["certificate"]}"\n'
        f'audience = "wsd"\nissuer = "{ISSUER}"\n'
    )
    server = _start(tmp_path_factory, "es", "--config", str(config), workers=1)
    server.mint = lambda claims: auth_material.es256({"aud": "wsd", "iss": ISSUER, **claims})
    watcher = Watcher(server, server.mint(claims(sub="watcher", ttl=600, subs=["watch"])))
    yield server
    watcher.finish()
    assert_no_restarts(server)
    server.kill()


@pytest.fixture(params=["hs", "es"], ids=["HS256", "ES256"])
def server(request):
    return request.getfixturevalue(request.param)


def claims(sub: str = "42", ttl: float = 60, **extra) -> dict:
    return {"sub": sub, "exp": int(time.time() + ttl), **extra}


def assert_no_restarts(server: WsdProcess) -> None:
    workers = server.status()["workers"]
    assert all(w["restarts"] == 0 for w in workers), f"a worker crashed: {workers}\n{server.read_log()}"


# ---- clients -------------------------------------------------------------------------------


def open_ws(server: WsdProcess, token: str | None = None, **options):
    url = server.url if token is None else f"{server.url}?token={token}"
    return connect(url, open_timeout=10, close_timeout=5, **options)


def call(ws, message: dict, timeout: float = 10) -> dict:
    """Send a request and return its reply (`ok` or `err` with the same id), skipping deliveries."""
    ws.send(json.dumps(message))
    while True:
        reply = json.loads(ws.recv(timeout=timeout))
        if reply.get("op") in ("ok", "err") and reply.get("id") == message.get("id"):
            return reply


def closed_with(ws, timeout: float = 10) -> tuple[int, str, float]:
    """Wait for the server's close: (code, reason, when)."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ws.recv(timeout=deadline - time.monotonic())
    except ConnectionClosed as closed:
        at = time.time()
        return closed.rcvd.code, closed.rcvd.reason, at
    raise AssertionError("the server did not close the connection")


def handshake_refusal(server: WsdProcess, query: str) -> tuple[int, dict]:
    """A handshake the server must refuse before the upgrade: (status, JSON body)."""
    with pytest.raises(InvalidStatus) as refused:
        connect(f"{server.url}{query}", open_timeout=10)
    response = refused.value.response
    return response.status_code, json.loads(response.body)


class Watcher:
    """A well-behaved client subscribed to `watch`, to which the API publishes every 20 ms."""

    def __init__(self, server: WsdProcess, token: str | None):
        self.server = server
        self.offsets: list[int] = []
        self.published = 0
        self.stop = threading.Event()
        self.connection = contextlib.ExitStack()
        self.ws = self.connection.enter_context(open_ws(server))
        if token is not None:
            assert call(self.ws, {"op": "auth", "token": token, "id": 0})["op"] == "ok"
        self.start = call(self.ws, {"op": "sub", "ch": "watch", "id": 1})["off"]
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.publisher = threading.Thread(target=self._publish, daemon=True)
        self.reader.start()
        self.publisher.start()

    def _read(self) -> None:
        try:
            for raw in self.ws:
                message = json.loads(raw)
                if message.get("op") == "msg":
                    self.offsets.append(message["off"])
        except ConnectionClosed:
            pass

    def _publish(self) -> None:
        while not self.stop.is_set():
            self.server.publish("watch", {"n": self.published})
            self.published += 1
            time.sleep(0.02)

    def finish(self) -> None:
        self.stop.set()
        self.publisher.join(10)
        deadline = time.monotonic() + 10
        while len(self.offsets) < self.published and time.monotonic() < deadline:
            time.sleep(0.05)
        self.connection.close()
        assert self.published > 10
        assert self.offsets == list(range(self.start + 1, self.start + 1 + self.published)), (
            "the watcher lost or reordered messages"
        )


# ---- decisions -----------------------------------------------------------------------------


def test_subscribe_and_publish_decisions_both_ways(server):
    token = server.mint(claims(subs=["user:42", "room:*"], pubs=["room:*"]))
    with open_ws(server, token) as ws:
        allowed = {"user:42": "exact", "room:7": "prefix", "news": "public", "public:eu": "public prefix"}
        for n, channel in enumerate(allowed, 1):
            reply = call(ws, {"op": "sub", "ch": channel, "id": n})
            assert reply["op"] == "ok", (allowed[channel], reply)
        for n, channel in enumerate(["user:43", "rooms", "room", "newsroom", "private"], 10):
            reply = call(ws, {"op": "sub", "ch": channel, "id": n})
            assert (reply["op"], reply["code"]) == ("err", "forbidden"), (channel, reply)
            assert channel in reply["msg"]
        # Publishing is allowed only by the token's pubs: public channels do not count.
        assert call(ws, {"op": "pub", "ch": "room:7", "data": "hi", "id": 20})["op"] == "ok"
        for n, channel in enumerate(["news", "user:42", "public:eu", "lobby"], 21):
            reply = call(ws, {"op": "pub", "ch": channel, "data": "x", "id": n})
            assert (reply["op"], reply["code"]) == ("err", "forbidden"), (channel, reply)
        # Refusals leave the connection open and its subscriptions working.
        assert call(ws, {"op": "unsub", "ch": "room:7", "id": 30})["op"] == "ok"
        assert call(ws, {"op": "ping", "id": 31})["op"] == "ok"
        offset = server.publish("user:42", {"to": "you"})
        while (message := json.loads(ws.recv(timeout=10)))["op"] != "msg":
            pass
        assert message == {"op": "msg", "ch": "user:42", "off": offset, "data": {"to": "you"}}


def test_a_token_without_subs_or_pubs_reads_only_public_channels(server):
    with open_ws(server, server.mint(claims())) as ws:
        assert call(ws, {"op": "sub", "ch": "news", "id": 1})["op"] == "ok"
        assert call(ws, {"op": "sub", "ch": "user:42", "id": 2})["code"] == "forbidden"
        assert call(ws, {"op": "pub", "ch": "news", "data": 1, "id": 3})["code"] == "forbidden"


def test_before_the_auth_message_every_op_is_unauthorized_then_the_token_applies(server):
    with open_ws(server) as ws:
        for n, message in enumerate(
            [{"op": "sub", "ch": "news"}, {"op": "pub", "ch": "room:1", "data": 1}, {"op": "unsub", "ch": "news"},
             {"op": "ping"}], 1,
        ):  # fmt: skip
            reply = call(ws, {**message, "id": n})
            assert (reply["op"], reply["code"]) == ("err", "unauthorized"), (message, reply)
        exp = int(time.time()) + 120
        reply = call(ws, {"op": "auth", "token": server.mint({"sub": "42", "exp": exp, "pubs": ["room:*"]}),
                             "id": 9})  # fmt: skip
        assert reply["op"] == "ok" and reply["sub"] == "42" and reply["exp"] == exp
        assert 110 <= reply["ttl"] <= 120
        assert call(ws, {"op": "sub", "ch": "news", "id": 10})["op"] == "ok"
        assert call(ws, {"op": "pub", "ch": "room:1", "data": 1, "id": 11})["op"] == "ok"


def test_no_auth_message_within_the_timeout_closes_with_1008(hs):
    with open_ws(hs) as ws:
        opened = time.time()
        code, reason, at = closed_with(ws)
    assert (code, reason) == (1008, "no auth message within 1 s")
    assert 0.9 <= at - opened < 2.5


def test_auth_does_nothing_on_a_server_without_auth(plain):
    with open_ws(plain) as ws:
        assert call(ws, {"op": "auth", "token": "anything", "id": 1}) == {"op": "ok", "id": 1}
        assert call(ws, {"op": "sub", "ch": "user:42", "id": 2})["op"] == "ok"
        assert call(ws, {"op": "pub", "ch": "user:42", "data": 1, "id": 3})["op"] == "ok"


# ---- refused tokens ------------------------------------------------------------------------


def refused_token(server: WsdProcess, es: bool, name: str, keys) -> tuple[str, str]:
    """(token, reason) for one way a token is refused, for this server's key (ES256 or HS256)."""
    base = claims()
    if name == "expired":
        return server.mint(claims(ttl=-5)), "token expired"
    if name == "not yet valid":
        return server.mint({**base, "nbf": int(time.time()) + 300}), "token not yet valid"
    if name == "wrong signature":
        if es:
            forger = ec.generate_private_key(ec.SECP256R1())
            return auth_material.es256({"aud": "wsd", "iss": ISSUER, **base}, forger), "bad signature"
        return auth_material.hs256(base, "another-secret-0123456789-abcdefghijklmnop"), "bad signature"
    if name == "alg none":
        return auth_material.unsigned(base), f"wrong algorithm 'none', expected {'ES256' if es else 'HS256'}"
    if name == "HS/RS confusion":
        # HS256 "signed" with the server's public key (as published in its certificate) as the secret.
        token = auth_material.forged_hs256({"aud": "wsd", "iss": ISSUER, **base}, keys["certificate_pem"])
        return token, f"wrong algorithm 'HS256', expected {'ES256' if es else 'HS256'}"
    if name == "wrong audience":
        return auth_material.es256({"aud": "another-service", "iss": ISSUER, **base}), "wrong audience"
    if name == "wrong issuer":
        return auth_material.es256({"aud": "wsd", "iss": "https://evil.example", **base}), "wrong issuer"
    if name == "missing sub":
        return server.mint({"exp": base["exp"]}), "missing sub"
    if name == "malformed":
        return "not.a.jwt", "malformed token"
    raise AssertionError(name)


COMMON_REFUSALS = ["expired", "not yet valid", "wrong signature", "alg none", "missing sub", "malformed"]
ES_REFUSALS = ["HS/RS confusion", "wrong audience", "wrong issuer"]
REFUSALS = [("hs", name) for name in COMMON_REFUSALS] + [("es", name) for name in COMMON_REFUSALS + ES_REFUSALS]


@pytest.mark.parametrize(("which", "name"), REFUSALS, ids=[f"{w}-{n}" for w, n in REFUSALS])
def test_a_refused_token_in_the_url_is_a_401_before_the_upgrade(request, keys, which, name):
    server = request.getfixturevalue(which)
    token, reason = refused_token(server, which == "es", name, keys)
    assert handshake_refusal(server, f"?token={token}") == (401, {"error": f"unauthorized: {reason}"})


@pytest.mark.parametrize(("which", "name"), REFUSALS, ids=[f"{w}-{n}" for w, n in REFUSALS])
def test_a_refused_token_in_the_auth_message_is_unauthorized_then_1008(request, keys, which, name):
    server = request.getfixturevalue(which)
    token, reason = refused_token(server, which == "es", name, keys)
    with open_ws(server) as ws:
        reply = call(ws, {"op": "auth", "token": token, "id": 5})
        assert reply == {"op": "err", "id": 5, "code": "unauthorized", "msg": reason}
        code, close_reason, _ = closed_with(ws)
    assert (code, close_reason) == (1008, f"unauthorized: {reason}")


def test_empty_or_repeated_token_parameters_are_401(hs):
    assert handshake_refusal(hs, "?token=") == (401, {"error": "unauthorized: empty token"})
    token = hs.mint(claims())
    assert handshake_refusal(hs, f"?token={token}&token={token}") == (
        401, {"error": "unauthorized: more than one token parameter"},
    )  # fmt: skip


def test_an_auth_message_without_a_token_string_is_refused(hs):
    with open_ws(hs) as ws:
        reply = call(ws, {"op": "auth", "token": 42, "id": 1})
        assert (reply["code"], reply["msg"]) == ("unauthorized", 'auth needs "token": a JWT string')
        assert closed_with(ws)[0] == 1008


# ---- refresh and expiry --------------------------------------------------------------------


def test_refresh_keeps_a_connection_and_an_unrefreshed_one_is_closed_at_exp(server):
    exp = int(time.time()) + 3
    short = server.mint({"sub": "42", "exp": exp, "subs": ["user:42"]})
    with open_ws(server, short) as expiring, open_ws(server, short) as refreshed:
        assert call(expiring, {"op": "sub", "ch": "user:42", "id": 1})["op"] == "ok"
        # A fresh token for the same sub: ok with the new exp.
        later = int(time.time()) + 120
        reply = call(refreshed, {"op": "auth", "token": server.mint({"sub": "42", "exp": later}), "id": 2})
        assert (reply["op"], reply["sub"], reply["exp"]) == ("ok", "42", later)
        # A token for another user: refused, and the connection stays as it was (its token still runs out).
        reply = call(expiring, {"op": "auth", "token": server.mint(claims(sub="43", ttl=120)), "id": 3})
        assert (reply["op"], reply["code"]) == ("err", "unauthorized") and "another user" in reply["msg"]
        # A token that fails verification is refused too, and the connection stays.
        reply = call(expiring, {"op": "auth", "token": server.mint(claims(ttl=-1)), "id": 4})
        assert (reply["code"], reply["msg"]) == ("unauthorized", "token expired")
        assert call(expiring, {"op": "ping", "id": 5})["op"] == "ok"
        code, reason, at = closed_with(expiring)
        assert (code, reason) == (1008, "token expired")
        assert exp <= at < exp + 1.0, f"closed {at - exp:.2f} s after exp"
        assert call(refreshed, {"op": "ping", "id": 6})["op"] == "ok"  # refreshed: still open after exp


def test_a_refresh_applies_the_new_tokens_permissions(hs):
    with open_ws(hs, hs.mint(claims(subs=["room:1"]))) as ws:
        assert call(ws, {"op": "sub", "ch": "room:1", "id": 1})["op"] == "ok"
        assert call(ws, {"op": "sub", "ch": "room:2", "id": 2})["code"] == "forbidden"
        assert call(ws, {"op": "auth", "token": hs.mint(claims(subs=["room:2"])), "id": 3})["op"] == "ok"
        assert call(ws, {"op": "sub", "ch": "room:2", "id": 4})["op"] == "ok"
        assert call(ws, {"op": "sub", "ch": "room:3", "id": 5})["code"] == "forbidden"


# ---- from ----------------------------------------------------------------------------------


def test_deliveries_of_client_publishes_carry_from_and_api_publishes_do_not(hs):
    channel = f"room:from-{time.monotonic_ns()}"
    alice = hs.mint(claims(sub="alice \"A\" é", pubs=["room:*"]))
    reader_token = hs.mint(claims(sub="bob", subs=["room:*"]))
    with contextlib.ExitStack() as stack, open_ws(hs, reader_token) as reader:
        # Over both workers: publishes sequenced where they arrive, and forwarded to the owner.
        publishers = [stack.enter_context(open_ws(hs, alice)) for _ in range(4)]
        reply = call(reader, {"op": "sub", "ch": channel, "id": 1})
        epoch = reply["epoch"]
        for n, ws in enumerate(publishers):
            assert call(ws, {"op": "pub", "ch": channel, "data": {"n": n}, "id": 2})["op"] == "ok"
        hs.publish(channel, {"n": "api"})
        seen = [json.loads(reader.recv(timeout=10)) for _ in range(5)]
    assert [m.get("from") for m in seen] == ['alice "A" é'] * 4 + [None]
    assert "from" not in seen[-1]
    # History keeps it: a resume replays the same deliveries.
    with open_ws(hs, reader_token) as again:
        reply = call(again, {"op": "sub", "ch": channel, "since": {"off": 0, "epoch": epoch}, "id": 1})
        assert reply["recovered"] is True
        replayed = [json.loads(again.recv(timeout=10)) for _ in range(5)]
    assert replayed == seen


# ---- the publish API's key and protected mode ----------------------------------------------


def _post(server: WsdProcess, headers: dict) -> tuple[int, dict]:
    body = json.dumps({"channel": "news", "data": "x"}).encode()
    post = urllib.request.Request(
        f"{server.api_url}/api/publish", data=body, headers={"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(post, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_the_publish_api_needs_its_key(hs):
    for headers in ({}, {"Authorization": "Bearer wrong-key-0123456789abcdef"}, {"Authorization": API_KEY},
                    {"Authorization": f"Basic {API_KEY}"}):  # fmt: skip
        status, body = _post(hs, headers)
        assert status == 401 and body["error"].startswith("unauthorized: "), (headers, status, body)
    status, body = _post(hs, {"Authorization": f"Bearer {API_KEY}"})
    assert status == 200 and body["offset"] >= 1
    status, body = _post(hs, {"Authorization": f"bearer {API_KEY}"})  # the scheme is case-insensitive
    assert status == 200
    # wsd ctl publish goes through the admin socket, and the supervisor sends the key.
    result = json.loads(hs.ctl("--json", "publish", "news", '{"via": "ctl"}').stdout)
    assert result["offset"] == body["offset"] + 1


def _serve(*flags: str, cwd, timeout: float = 20) -> subprocess.CompletedProcess:
    command = [*WSD, "serve", "--port", str(free_port()), "--api-port", str(free_port()), "--workers", "1",
               "--admin-socket", str(cwd / "wsd.sock"), *flags]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=cwd)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--api-host", "0.0.0.0"],
         "refusing to start: --api-host 0.0.0.0 is reachable from other machines and no API key"),
        (["--auth-secret-file", "/nonexistent/secret"],
         "--auth-secret-file / [auth] secret_file: /nonexistent/secret does not exist"),
        (["--auth-secret", "short"], "the HS256 secret is 5 bytes; use at least 32"),
        (["--auth-public-key", "PRIVATE"], "the file holds a private key"),
        (["--auth-audience", "wsd"], "--auth-audience only mean something with auth on"),
        (["--api-key-file", "/nonexistent/key"], "--api-key-file: /nonexistent/key does not exist"),
        (["--allowed-origins", "https://*.example.com"], "wildcards are not supported"),
        (["--tls-cert", "/nonexistent/cert.pem", "--tls-key", "/nonexistent/key.pem"],
         "--tls-cert: /nonexistent/cert.pem does not exist"),
        (["--tls-cert", "cert.pem"], "tls_cert needs tls_key too"),
    ],
    ids=["protected-mode", "missing-secret-file", "short-secret", "private-key", "audience-without-key",
         "missing-api-key-file", "origin-wildcard", "missing-certificate", "certificate-without-key"],
)  # fmt: skip
def test_bad_security_settings_stop_the_start_with_a_clear_message(tmp_path, flags, message):
    private = auth_material.write(tmp_path / "private.pem", auth_material.private_pem(auth_material.ec_private_key()))
    flags = [private if flag == "PRIVATE" else flag for flag in flags]
    started = time.monotonic()
    result = _serve(*flags, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 10  # refused at once: no worker was started


def test_protected_mode_is_satisfied_by_an_api_key_and_open_access_is_a_warning(tmp_path_factory, keys):
    server = _start(tmp_path_factory, "public", "--host", "0.0.0.0", "--api-host", "0.0.0.0",
                    "--api-key-file", keys["api_key_file"], workers=1)  # fmt: skip
    try:
        server.api_key = API_KEY
        assert server.publish("news", 1) == 1
        log = server.read_log()
        assert "WARNING --host 0.0.0.0 is reachable from other machines and no auth is configured" in log, log
    finally:
        server.kill()


def test_a_server_with_auth_or_on_loopback_does_not_warn(hs, plain):
    for server in (hs, plain):
        assert "no auth is configured" not in server.read_log()


# ---- Origin --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ([], 101),  # no Origin: not a browser
        ([("Origin", "https://app.example.com")], 101),
        ([("Origin", "HTTPS://App.Example.com:443")], 101),  # normalised
        ([("Origin", "http://localhost:3000")], 101),
        ([("Origin", "https://evil.example.com")], 403),
        ([("Origin", "http://app.example.com")], 403),  # another scheme
        ([("Origin", "https://app.example.com:8443")], 403),  # another port
        ([("Origin", "null")], 403),
        ([("Origin", "https://app.example.com"), ("Origin", "https://evil.example.com")], 403),
    ],
    ids=["none", "listed", "normalised", "listed-port", "other-host", "other-scheme", "other-port", "null", "twice"],
)
def test_origin_not_listed_is_refused_with_403(hs, headers, status):
    client = RawWebSocket("127.0.0.1", hs.port, headers=headers)
    try:
        assert client.status == status, client.headers
        if status == 403:
            body = json.loads(client.buffer)
            assert body["error"].startswith("forbidden: "), body
        else:
            client.send_text(json.dumps({"op": "ping", "id": 1}))
            assert json.loads(client.recv_frame()[1])["code"] == "unauthorized"  # upgraded: auth comes next
    finally:
        client.close()


# ---- rate limits ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """No auth (as `make run`), a low client rate so the limit is reached quickly."""
    server = _start(tmp_path_factory, "plain", "--client-rate", "20", workers=1)
    watcher = Watcher(server, None)
    yield server
    watcher.finish()
    assert_no_restarts(server)
    server.kill()


def test_requests_over_the_rate_get_rate_limited_and_the_connection_stays(plain):
    with open_ws(plain) as ws:
        for n in range(60):  # a burst: 2R = 40 are allowed at once
            ws.send(json.dumps({"op": "ping", "id": n}))
        replies = [json.loads(ws.recv(timeout=10)) for _ in range(60)]
        assert [r["id"] for r in replies] == list(range(60))
        ok = [r for r in replies if r["op"] == "ok"]
        limited = [r for r in replies if r["op"] == "err"]
        assert 40 <= len(ok) <= 45 and replies[:40] == ok[:40]
        assert limited and all(r["code"] == "rate_limited" for r in limited)
        time.sleep(1.0)  # the bucket refills at R per second
        assert call(ws, {"op": "sub", "ch": "after", "id": 100})["op"] == "ok"


def test_a_client_flooding_over_ten_times_the_rate_for_five_seconds_is_closed(plain):
    with open_ws(plain) as ws:
        started = time.monotonic()
        stopped = threading.Event()

        def flood() -> None:  # 400 requests per second: over 10R (200) in every one-second window
            n = 0
            try:
                while not stopped.is_set() and time.monotonic() - started < 15:
                    for _ in range(20):
                        ws.send(json.dumps({"op": "ping", "id": n}))
                        n += 1
                    time.sleep(0.05)
            except ConnectionClosed:
                pass

        sender = threading.Thread(target=flood, daemon=True)
        sender.start()
        code, reason, _ = closed_with(ws, timeout=20)
        stopped.set()
        sender.join(5)
    assert (code, reason) == (1008, "too many requests")
    assert 4.0 <= time.monotonic() - started < 12
