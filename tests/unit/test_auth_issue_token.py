"""The demo token issuer (docs/examples/issue_token.py) makes keys and tokens that wsd's gate accepts."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from wsd.server.auth.gate import AuthGate
from wsd.server.auth.keys import AuthSettings
from wsd.server.auth.tokens import Identity

SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "examples" / "issue_token.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def issue(*args: str) -> str:
    result = run("token", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_hs256_secret_and_token(tmp_path):
    secret = tmp_path / "demo.secret"
    assert run("new-secret", str(secret)).returncode == 0
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    token = issue("--secret-file", str(secret), "--sub", "user:42", "--subs", "user:42,room:*", "--pubs", "room:*")
    gate = AuthGate.from_settings(AuthSettings(secret_file=str(secret), public_channels=("public:*",)))
    identity = gate.authenticate_query(token, time.time())
    assert isinstance(identity, Identity) and identity.sub == "user:42"
    assert gate.check_subscribe(identity, "room:1") is None and gate.check_publish(identity, "room:1") is None
    assert gate.check_publish(identity, "user:42").code == "forbidden"
    assert 3590 < identity.exp - time.time() <= 3600


@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_key_pair_and_token(tmp_path, kind):
    private, public = tmp_path / "private.pem", tmp_path / "public.pem"
    assert run("new-keypair", str(private), str(public), *(["--rsa"] if kind == "rsa" else [])).returncode == 0
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600
    token = issue("--private-key", str(private), "--sub", "u", "--ttl", "60", "--aud", "wsd", "--iss", "app")
    gate = AuthGate.from_settings(AuthSettings(public_key_file=str(public), audience="wsd", issuer="app"))
    identity = gate.authenticate_query(token, time.time())
    assert isinstance(identity, Identity) and identity.sub == "u"
    assert gate.verifier.key.algorithm == ("ES256" if kind == "ec" else "RS256")


def test_existing_files_are_not_overwritten(tmp_path):
    secret = tmp_path / "demo.secret"
    secret.write_text("keep me")
    result = run("new-secret", str(secret))
    assert result.returncode != 0 and "exists: not overwritten" in result.stderr
    assert secret.read_text() == "keep me"


def test_the_demo_token_server_issues_tokens_for_the_name_asked(tmp_path):
    private, public = tmp_path / "private.pem", tmp_path / "public.pem"
    assert run("new-keypair", str(private), str(public)).returncode == 0
    server = subprocess.Popen(
        [sys.executable, str(SCRIPT), "serve", "--private-key", str(private), "--port", "0", "--subs", "feed",
         "--pubs", "feed", "--ttl", "90"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        banner = server.stdout.readline()
        url = banner.split(" on ", 1)[1].split("?", 1)[0]
        with urllib.request.urlopen(f"{url}?sub=alice", timeout=10) as response:
            assert response.headers["Access-Control-Allow-Origin"] == "*"
            token = response.read().decode()
    finally:
        server.terminate()
        server.wait(10)
    gate = AuthGate.from_settings(AuthSettings(public_key_file=str(public)))
    identity = gate.authenticate_query(token, time.time())
    assert isinstance(identity, Identity) and identity.sub == "alice"
    assert gate.check_publish(identity, "feed") is None and 80 < identity.exp - time.time() <= 90
