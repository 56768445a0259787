"""Unit tests of wsd.server.auth.tokens: every way a connection token is accepted or refused."""

from __future__ import annotations

import hashlib
import hmac
import json

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st
from jwt.exceptions import InvalidKeyError

from tests.auth_material import (
    SECRET,
    b64,
    certificate_pem,
    ec_private_key,
    es256,
    forged_hs256,
    hs256,
    public_pem,
    rs256,
    rsa_private_key,
    self_signed_certificate,
    unsigned,
    write,
)
from wsd.server.auth.keys import AuthSettings, TokenKey, load_token_key
from wsd.server.auth.tokens import MAX_TOKEN_LENGTH, AuthError, Identity, TokenVerifier

NOW = 1_800_000_000.0


def hs_verifier(**kwargs) -> TokenVerifier:
    return TokenVerifier(load_token_key(AuthSettings(secret=SECRET)), **kwargs)


def public_key_verifier(tmp_path, private_key, **kwargs) -> TokenVerifier:
    path = write(tmp_path / "public.pem", public_pem(private_key))
    return TokenVerifier(load_token_key(AuthSettings(public_key_file=path)), **kwargs)


def claims(**extra) -> dict:
    return {"sub": "user:1", "exp": NOW + 600, **extra}


def refused(result, reason: str, kind: str) -> None:
    assert isinstance(result, AuthError), result
    assert result.code == "unauthorized"
    assert (result.reason, result.kind) == (reason, kind)


def test_valid_hs256_token_gives_identity_with_permissions():
    result = hs_verifier().verify(hs256(claims(subs=["news", "room:*"], pubs=["room:1"])), NOW)
    assert isinstance(result, Identity)
    assert result.sub == "user:1" and result.exp == NOW + 600
    assert result.subs.matches("room:7") and result.subs.matches("news") and not result.subs.matches("other")
    assert result.pubs.matches("room:1") and not result.pubs.matches("room:2")


def test_token_without_subs_or_pubs_may_do_nothing_by_itself():
    result = hs_verifier().verify(hs256(claims()), NOW)
    assert not result.subs and not result.pubs
    assert not result.subs.matches("news")


def test_valid_es256_and_rs256_tokens(tmp_path):
    assert public_key_verifier(tmp_path, ec_private_key()).verify(es256(claims()), NOW).sub == "user:1"
    assert public_key_verifier(tmp_path, rsa_private_key()).verify(rs256(claims()), NOW).sub == "user:1"


def test_token_as_bytes():
    assert hs_verifier().verify(hs256(claims()).encode(), NOW).sub == "user:1"


def test_expired_at_exp_not_before():
    verifier = hs_verifier()
    token = hs256(claims())
    assert isinstance(verifier.verify(token, NOW + 599.999), Identity)
    refused(verifier.verify(token, NOW + 600), "token expired", "expired")
    refused(verifier.verify(token, NOW + 10_000), "token expired", "expired")


def test_not_yet_valid():
    verifier = hs_verifier()
    token = hs256(claims(nbf=NOW + 10))
    refused(verifier.verify(token, NOW), "token not yet valid", "immature")
    assert isinstance(verifier.verify(token, NOW + 10), Identity)


def test_leeway_applies_to_exp_and_nbf():
    verifier = hs_verifier(leeway_s=5)
    assert isinstance(verifier.verify(hs256(claims(nbf=NOW + 4)), NOW), Identity)
    assert isinstance(verifier.verify(hs256(claims()), NOW + 604), Identity)
    refused(verifier.verify(hs256(claims()), NOW + 605), "token expired", "expired")


def test_bad_signature():
    verifier = hs_verifier()
    refused(
        verifier.verify(hs256(claims(), secret="another-secret-0123456789-abcdefghijklmnop"), NOW),
        "bad signature",
        "signature",
    )
    header, payload, signature = hs256(claims()).split(".")
    tampered_payload = b64(json.dumps(claims(sub="admin")).encode()).decode()
    refused(verifier.verify(f"{header}.{tampered_payload}.{signature}", NOW), "bad signature", "signature")


def test_bad_signature_with_public_keys(tmp_path):
    other_ec = jwt.encode(claims(), ec.generate_private_key(ec.SECP256R1()), algorithm="ES256")
    refused(public_key_verifier(tmp_path, ec_private_key()).verify(other_ec, NOW), "bad signature", "signature")


def test_expired_token_with_a_bad_signature_is_a_bad_signature():
    # The signature is checked before any claim: a forger learns nothing from the claims' reasons.
    token = hs256(claims(exp=NOW - 1), secret="another-secret-0123456789-abcdefghijklmnop")
    refused(hs_verifier().verify(token, NOW), "bad signature", "signature")


def test_audience_checked_when_configured():
    verifier = hs_verifier(audience="wsd")
    assert isinstance(verifier.verify(hs256(claims(aud="wsd")), NOW), Identity)
    assert isinstance(verifier.verify(hs256(claims(aud=["other", "wsd"])), NOW), Identity)
    refused(verifier.verify(hs256(claims(aud="other")), NOW), "wrong audience", "audience")
    refused(verifier.verify(hs256(claims()), NOW), "missing aud", "audience")


def test_audience_ignored_when_not_configured():
    assert isinstance(hs_verifier().verify(hs256(claims(aud="anything")), NOW), Identity)


def test_issuer_checked_when_configured():
    verifier = hs_verifier(issuer="https://app.example")
    assert isinstance(verifier.verify(hs256(claims(iss="https://app.example")), NOW), Identity)
    refused(verifier.verify(hs256(claims(iss="https://evil.example")), NOW), "wrong issuer", "issuer")
    refused(verifier.verify(hs256(claims()), NOW), "missing iss", "issuer")
    assert isinstance(hs_verifier().verify(hs256(claims(iss="whoever")), NOW), Identity)


def test_sub_and_exp_are_required():
    verifier = hs_verifier()
    refused(verifier.verify(hs256({"exp": NOW + 60}), NOW), "missing sub", "claim")
    refused(verifier.verify(hs256({"sub": "u"}), NOW), "missing exp", "claim")


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"sub": 42}, "bad sub: must be a string"),
        ({"sub": ""}, "bad sub: empty"),
        ({"sub": "u" * 256}, "bad sub: over 255 bytes (UTF-8)"),
        ({"sub": "é" * 128}, "bad sub: over 255 bytes (UTF-8)"),
        ({"exp": "tomorrow"}, "bad exp: must be a number of seconds since the epoch"),
        ({"exp": True}, "bad exp: must be a number of seconds since the epoch"),
        ({"nbf": "now"}, "bad nbf: must be a number of seconds since the epoch"),
        ({"subs": "news"}, "bad subs: must be a list of channel patterns"),
        ({"pubs": {"a": 1}}, "bad pubs: must be a list of channel patterns"),
        ({"jti": 5}, "bad jti: must be a string"),
    ],
)
def test_malformed_claims(extra, reason):
    refused(hs_verifier().verify(hs256(claims(**extra)), NOW), reason, "claim")


def test_invalid_pattern_in_claims_is_named():
    result = hs_verifier().verify(hs256(claims(subs=["room:*:x"])), NOW)
    assert isinstance(result, AuthError) and result.reason.startswith("bad subs: channel pattern 'room:*:x'")
    result = hs_verifier().verify(hs256(claims(pubs=[["nested"]])), NOW)
    assert isinstance(result, AuthError) and result.reason.startswith("bad pubs: a channel pattern must be a string")


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b",
        "a.b.c",
        "....",
        "eyJhbGciOiJIUzI1NiJ9.%%%.sig",
        "🙂.🙂.🙂",
        b64(b"[1,2]").decode() + ".e30.",
        b64(b'{"alg":"HS256"}').decode() + "." + b64(b"not json").decode() + ".x",
    ],
)
def test_malformed_tokens(token):
    result = hs_verifier().verify(token, NOW)
    assert isinstance(result, AuthError)
    assert result.kind in ("malformed", "empty", "signature")


def test_too_long_and_non_string_tokens():
    refused(hs_verifier().verify("a" * (MAX_TOKEN_LENGTH + 1), NOW), f"token over {MAX_TOKEN_LENGTH} bytes", "too_long")
    refused(hs_verifier().verify(None, NOW), "token must be a string", "malformed")  # type: ignore[arg-type]
    refused(hs_verifier().verify(12, NOW), "token must be a string", "malformed")  # type: ignore[arg-type]


def test_alg_none_is_refused_by_every_key(tmp_path):
    for verifier in (
        hs_verifier(),
        public_key_verifier(tmp_path, ec_private_key()),
        public_key_verifier(tmp_path, rsa_private_key()),
    ):
        for alg in ("none", "None", "NONE"):
            result = verifier.verify(unsigned(claims(), alg), NOW)
            assert isinstance(result, AuthError) and result.kind == "algorithm", (alg, result)
    refused(hs_verifier().verify(unsigned(claims(), ""), NOW), "wrong algorithm '', expected HS256", "algorithm")


def test_algorithm_is_pinned_by_the_key(tmp_path):
    refused(
        hs_verifier().verify(jwt.encode(claims(), SECRET * 2, algorithm="HS512"), NOW),
        "wrong algorithm 'HS512', expected HS256",
        "algorithm",
    )
    ec_verifier = public_key_verifier(tmp_path, ec_private_key())
    refused(ec_verifier.verify(rs256(claims()), NOW), "wrong algorithm 'RS256', expected ES256", "algorithm")
    rsa_verifier = public_key_verifier(tmp_path, rsa_private_key())
    refused(
        rsa_verifier.verify(jwt.encode(claims(), rsa_private_key(), algorithm="RS512"), NOW),
        "wrong algorithm 'RS512', expected RS256",
        "algorithm",
    )
    refused(
        rsa_verifier.verify(jwt.encode(claims(), rsa_private_key(), algorithm="PS256"), NOW),
        "wrong algorithm 'PS256', expected RS256",
        "algorithm",
    )


@pytest.mark.parametrize("kind", ["rsa", "ec", "certificate"])
def test_hs_rs_confusion_is_refused(tmp_path, kind):
    """An HS256 token whose secret is the server's public key PEM (what an attacker can read) fails."""
    if kind == "certificate":
        private_key = rsa_private_key()
        pem = certificate_pem(self_signed_certificate(private_key))
    else:
        private_key = rsa_private_key() if kind == "rsa" else ec_private_key()
        pem = public_pem(private_key)
    verifier = TokenVerifier(load_token_key(AuthSettings(public_key_file=write(tmp_path / "k.pem", pem))))
    for secret in (pem, pem.strip(), public_pem(private_key)):
        result = verifier.verify(forged_hs256(claims(), secret), NOW)
        assert isinstance(result, AuthError) and result.kind == "algorithm", result
    # Even a verifier mistakenly built to take HS256 with the PEM as its secret cannot be made (PyJWT).
    with pytest.raises(InvalidKeyError):
        TokenVerifier(TokenKey("HS256", pem, "test"))


def test_identities_with_the_same_claims_share_compiled_patterns():
    verifier = hs_verifier()
    first = verifier.verify(hs256(claims(sub="a", subs=["room:*", "news"])), NOW)
    second = verifier.verify(hs256(claims(sub="b", subs=["room:*", "news"])), NOW)
    assert first.subs is second.subs


def test_error_reasons_never_echo_the_token():
    token = hs256(claims(exp=NOW - 1))
    result = hs_verifier().verify(token, NOW)
    assert token not in result.reason and len(result.reason) < 80


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300) | st.binary(max_size=300))
def test_arbitrary_input_never_raises(token):
    assert isinstance(hs_verifier().verify(token, NOW), AuthError)


@settings(max_examples=300, deadline=None)
@given(
    header=st.dictionaries(st.sampled_from(["alg", "typ", "kid", "b64", "crit"]), json_values, max_size=4),
    payload=st.dictionaries(
        st.sampled_from(["sub", "exp", "nbf", "aud", "iss", "subs", "pubs", "jti", "iat"]), json_values, max_size=7
    ),
    sign=st.booleans(),
)
def test_arbitrary_headers_and_claims_never_raise(header, payload, sign):
    signing_input = b64(json.dumps(header).encode()) + b"." + b64(json.dumps(payload).encode())
    signature = b64(hmac.new(SECRET.encode(), signing_input, hashlib.sha256).digest()) if sign else b"x"
    for verifier in (hs_verifier(), hs_verifier(audience="a", issuer="i")):
        result = verifier.verify((signing_input + b"." + signature).decode(), NOW)
        assert isinstance(result, (AuthError, Identity))


# ---- the compact-form parser against PyJWT's jwt.decode ----------------------------------------

# JSON values within what both parsers read alike (orjson refuses NaN and integers beyond 64 bits).
plain_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)
claim_values = {
    "sub": st.one_of(st.sampled_from(["user:1", "", "x" * 300]), plain_json),
    "exp": st.one_of(st.sampled_from([NOW + 60, NOW - 60, int(NOW) + 5, True]), plain_json),
    "nbf": st.one_of(st.sampled_from([NOW - 5, NOW + 5]), plain_json),
    "aud": st.one_of(st.sampled_from(["wsd", ["wsd", "x"], ["x"], [], ["wsd", 3], ""]), plain_json),
    "iss": st.one_of(st.sampled_from(["app", "other"]), plain_json),
    "jti": st.one_of(st.sampled_from(["j1"]), plain_json),
    "subs": st.one_of(st.sampled_from([["room:*"], ["bad*x"], []]), plain_json),
}
# Mostly well-formed claims (so PyJWT often accepts and the claim checks are compared too), or anything.
claim_sets = st.one_of(
    st.fixed_dictionaries(
        {"sub": st.just("user:1"), "exp": st.just(NOW + 60)},
        optional={name: values for name, values in claim_values.items() if name not in ("sub", "exp")},
    ),
    st.fixed_dictionaries({}, optional=claim_values),
)
headers = st.fixed_dictionaries(
    {"alg": st.one_of(st.just("HS256"), st.sampled_from(["HS256", "HS512", "none", "RS256", None, 7]))},
    optional={"typ": st.sampled_from(["JWT", 5]), "kid": st.sampled_from(["k1", 3]), "x": plain_json},
)
edits = st.one_of(
    st.just([]),
    st.lists(st.tuples(st.integers(0, 400), st.sampled_from(list("A_-=+/.!\n é") + [""]), st.booleans()), max_size=3),
)


def pyjwt_verdict(token: str, verifier: TokenVerifier):
    """PyJWT's decision with the options wsd's verifier means: claims, or None if refused."""
    try:
        return jwt.decode(
            token,
            SECRET,
            algorithms=["HS256"],
            audience=verifier.audience,
            issuer=verifier.issuer,
            options={
                "verify_exp": False,  # times and the rest are wsd's own checks, applied to both below
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": verifier.audience is not None,
                "verify_iss": verifier.issuer is not None,
                "require": ["sub", "exp"],
            },
        )
    except jwt.PyJWTError:
        return None


@settings(max_examples=1500, deadline=None)
@given(
    header=headers, payload=claim_sets, sign=st.sampled_from([True, True, False]), edit=edits, configured=st.booleans()
)
def test_verdicts_agree_with_pyjwt_decode(header, payload, sign, edit, configured):
    verifier = hs_verifier(audience="wsd", issuer="app") if configured else hs_verifier()
    header = {k: v for k, v in header.items() if v is not None}
    signing_input = b64(json.dumps(header).encode()) + b"." + b64(json.dumps(payload).encode())
    signature = hmac.new(SECRET.encode(), signing_input, hashlib.sha256).digest() if sign else b"\0" * 32
    token = (signing_input + b"." + b64(signature)).decode()
    for position, text, replace in edit:  # damage the token: padding, foreign characters, dots
        position %= len(token) + 1
        token = token[:position] + text + token[position + (1 if replace else 0) :]
    ours = verifier.verify(token, NOW)
    theirs = pyjwt_verdict(token, verifier)
    if theirs is None:
        assert isinstance(ours, AuthError), (token, ours)
    else:
        # PyJWT accepted the form and signature; wsd must then decide exactly by its claim checks.
        assert ours == verifier._identity(theirs, NOW), (token, ours, theirs)
