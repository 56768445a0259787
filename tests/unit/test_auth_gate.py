"""Unit tests of wsd.server.auth.gate: the handshake's and the session's decisions, both ways."""

from __future__ import annotations

import json

import pytest

from tests.auth_material import SECRET, ec_private_key, es256, hs256, public_pem, write
from wsd.server.auth.gate import (
    ANONYMOUS,
    NEEDS_AUTH_MESSAGE,
    AuthGate,
    http_refusal_body,
    token_from_target,
)
from wsd.server.auth.keys import AuthSettings
from wsd.server.auth.replies import close_reason
from wsd.server.auth.tokens import AuthError, Identity

NOW = 1_800_000_000.0


@pytest.fixture(params=["HS256", "ES256"])
def signed(request, tmp_path):
    """(gate, sign): a gate with public channels `public:*` and a signer of tokens it accepts."""
    if request.param == "HS256":
        settings = AuthSettings(secret=SECRET, public_channels=("public:*",))
        sign = hs256
    else:
        path = write(tmp_path / "ec.pem", public_pem(ec_private_key()))
        settings = AuthSettings(public_key_file=path, public_channels=("public:*",))
        sign = es256
    return AuthGate.from_settings(settings), sign


def token_claims(sub="user:1", exp=NOW + 600, **extra):
    return {"sub": sub, "exp": exp, **extra}


def reply(outcome) -> dict:
    return json.loads(outcome.reply)


# ---- auth off ------------------------------------------------------------------------------


def test_auth_off_lets_everyone_do_everything():
    gate = AuthGate.from_settings(AuthSettings())
    assert not gate.enabled
    assert gate.authenticate_target("/ws", NOW) is ANONYMOUS
    assert gate.authenticate_target("/ws?token=garbage", NOW) is ANONYMOUS  # not even read
    assert gate.check_subscribe(ANONYMOUS, "user:1") is None
    assert gate.check_publish(ANONYMOUS, "anything") is None
    assert gate.check_other(None) is None
    assert gate.deadline_close(None, NOW) is None
    outcome = gate.authenticate_message(ANONYMOUS, "whatever", 3, NOW)
    assert reply(outcome) == {"op": "ok", "id": 3} and outcome.close is None and outcome.identity is ANONYMOUS


# ---- the handshake -------------------------------------------------------------------------


def test_handshake_without_token_waits_for_the_auth_message(signed):
    gate, _ = signed
    assert gate.authenticate_target("/ws", NOW) is NEEDS_AUTH_MESSAGE
    assert gate.authenticate_target("/ws?other=1", NOW) is NEEDS_AUTH_MESSAGE
    assert gate.auth_deadline(100.0) == 105.0


def test_handshake_with_a_valid_token(signed):
    gate, sign = signed
    identity = gate.authenticate_target(f"/ws?token={sign(token_claims())}", NOW)
    assert isinstance(identity, Identity) and identity.sub == "user:1"
    assert isinstance(gate.authenticate_target(f"/ws?token={sign(token_claims())}".encode(), NOW), Identity)


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("/ws?token=", "empty token"),
        ("/ws?token", "empty token"),
        ("/ws?token=abc", "malformed token"),
        ("/ws?token=a&token=b", "more than one token parameter"),
    ],
)
def test_handshake_with_empty_or_invalid_token_is_401(signed, target, reason):
    gate, _ = signed
    error = gate.authenticate_target(target, NOW)
    assert isinstance(error, AuthError) and error.reason == reason
    assert json.loads(http_refusal_body(error)) == {"error": f"unauthorized: {reason}"}


def test_handshake_with_an_expired_token_is_401(signed):
    gate, sign = signed
    error = gate.authenticate_query(sign(token_claims(exp=NOW - 1)), NOW)
    assert isinstance(error, AuthError) and error.reason == "token expired"


def test_token_from_target_decodes_percent_escapes():
    assert token_from_target("/ws?a=1&token=x%2Ey&b=2") == "x.y"
    assert token_from_target("/ws?tokens=1") is None
    assert token_from_target("/ws") is None


# ---- the session ---------------------------------------------------------------------------


def test_until_authenticated_every_op_is_unauthorized(signed):
    gate, _ = signed
    for refusal in (gate.check_subscribe(None, "public:x"), gate.check_publish(None, "x"), gate.check_other(None)):
        assert refusal.code == "unauthorized"
        assert json.loads(refusal.encode(4)) == {
            "op": "err",
            "id": 4,
            "code": "unauthorized",
            "msg": 'authenticate first: send {"op":"auth","token":JWT,"id":N}',
        }


def test_first_auth_message(signed):
    gate, sign = signed
    outcome = gate.authenticate_message(None, sign(token_claims(subs=["room:*"])), 1, NOW)
    assert outcome.close is None and outcome.deadline == NOW + 600
    assert outcome.identity.sub == "user:1"
    assert reply(outcome) == {"op": "ok", "id": 1, "sub": "user:1", "exp": int(NOW + 600), "ttl": 600}


@pytest.mark.parametrize("bad", ["expired", "garbage", "not a string"])
def test_bad_first_auth_message_is_unauthorized_then_closed(signed, bad):
    gate, sign = signed
    token = {"expired": sign(token_claims(exp=NOW - 1)), "garbage": "x.y.z", "not a string": 5}[bad]
    outcome = gate.authenticate_message(None, token, 1, NOW)
    assert outcome.identity is None
    body = reply(outcome)
    assert body["op"] == "err" and body["code"] == "unauthorized" and body["id"] == 1
    code, reason = outcome.close
    assert code == 1008 and reason == f"unauthorized: {body['msg']}"


def test_refresh_with_the_same_sub_extends_exp_and_takes_the_new_permissions(signed):
    gate, sign = signed
    first = gate.authenticate_message(None, sign(token_claims(subs=["room:1"])), 1, NOW).identity
    outcome = gate.authenticate_message(first, sign(token_claims(exp=NOW + 3600, subs=["room:2"])), 2, NOW + 500)
    assert outcome.close is None and outcome.deadline == NOW + 3600
    assert outcome.identity.exp == NOW + 3600
    assert reply(outcome)["ttl"] == 3100
    assert gate.check_subscribe(outcome.identity, "room:2") is None
    assert gate.check_subscribe(outcome.identity, "room:1").code == "forbidden"


def test_refresh_with_another_sub_is_refused_and_the_connection_stays_as_it_was(signed):
    gate, sign = signed
    first = gate.authenticate_message(None, sign(token_claims()), 1, NOW).identity
    outcome = gate.authenticate_message(first, sign(token_claims(sub="user:2", exp=NOW + 3600)), 2, NOW)
    assert outcome.identity is first and outcome.close is None and outcome.deadline is None
    body = reply(outcome)
    assert body["code"] == "unauthorized" and "another user" in body["msg"]


def test_refresh_with_a_bad_token_is_refused_and_the_connection_stays_as_it_was(signed):
    gate, sign = signed
    first = gate.authenticate_message(None, sign(token_claims()), 1, NOW).identity
    outcome = gate.authenticate_message(first, sign(token_claims(exp=NOW - 1)), 2, NOW)
    assert outcome.identity is first and outcome.close is None and outcome.deadline is None
    assert reply(outcome)["code"] == "unauthorized"


def test_subscribe_allowed_by_subs_or_public_patterns_else_forbidden(signed):
    gate, sign = signed
    identity = gate.authenticate_query(sign(token_claims(subs=["user:1", "room:*"])), NOW)
    for channel in ("user:1", "room:5", "public:news"):
        assert gate.check_subscribe(identity, channel) is None, channel
    refusal = gate.check_subscribe(identity, "user:2")
    assert (refusal.code, refusal.msg) == ("forbidden", "not allowed to subscribe to user:2")
    assert gate.check_other(identity) is None


def test_publish_allowed_only_by_pubs(signed):
    gate, sign = signed
    identity = gate.authenticate_query(sign(token_claims(subs=["room:*"], pubs=["room:1"])), NOW)
    assert gate.check_publish(identity, "room:1") is None
    for channel in ("room:2", "public:news"):
        refusal = gate.check_publish(identity, channel)
        assert (refusal.code, refusal.msg) == ("forbidden", f"not allowed to publish to {channel}")


# ---- deadlines -----------------------------------------------------------------------------


def test_deadlines(signed):
    gate, sign = signed
    assert gate.deadline_close(None, NOW) == (1008, "no auth message within 5 s")
    identity = gate.authenticate_query(sign(token_claims()), NOW)
    assert gate.deadline_close(identity, NOW + 599) is None  # refreshed meanwhile, or early
    assert gate.deadline_close(identity, NOW + 600) == (1008, "token expired")


def test_auth_timeout_is_configurable_and_validated():
    gate = AuthGate.from_settings(AuthSettings(secret=SECRET), auth_timeout_s=2.5)
    assert gate.deadline_close(None, NOW) == (1008, "no auth message within 2.5 s")
    with pytest.raises(ValueError, match="--auth-timeout must be a positive"):
        AuthGate(None, auth_timeout_s=0)


def test_audience_and_issuer_from_settings():
    gate = AuthGate.from_settings(AuthSettings(secret=SECRET, audience="wsd", issuer="app"))
    assert isinstance(gate.authenticate_query(hs256(token_claims(aud="wsd", iss="app")), NOW), Identity)
    assert gate.authenticate_query(hs256(token_claims(aud="wsd", iss="x")), NOW).reason == "wrong issuer"
    assert gate.authenticate_query(hs256(token_claims(aud="x", iss="app")), NOW).reason == "wrong audience"


def test_close_reasons_fit_in_a_close_frame():
    assert close_reason("token expired") == "token expired"
    long = close_reason("é" * 100)
    assert len(long.encode()) <= 123 and long.endswith("...")
