"""Connection tokens: a JWT in, an `Identity` or an `AuthError` out.

Claims: `sub` (the user id, required), `exp` (required), optional `nbf`, `subs` and `pubs` (lists of
channel patterns, see permissions), `aud` and `iss` (checked when `--auth-audience` /
`--auth-issuer` are set; ignored otherwise, as in Centrifugo). `iat` is not checked.

The signature is checked by PyJWT's implementation of the one algorithm the key pins (keys), with
the key prepared once, before any claim is parsed. The compact form around it (three strict
base64url segments, a JSON header naming exactly that algorithm, no `crit` extensions) is parsed
here with orjson rather than by `jwt.decode`, which re-prepares the key and validates in pure Python
on every call: 6x faster for HS256, 2x for ES256 (bench/auth_verify.py). The unit tests hold this
parser to `jwt.decode`'s verdicts on generated tokens. Times are checked against the clock the
caller passes in (wall-clock seconds), so expiry is testable without waiting.

An `AuthError` carries a short reason ("token expired", "bad signature", ...) fit for an HTTP 401
body or an `err` message: it says what is wrong without echoing the token.
"""

from __future__ import annotations

import binascii
import math
from dataclasses import dataclass

import orjson

from wsd.server.auth import UNAUTHORIZED
from wsd.server.auth.keys import TokenKey
from wsd.server.auth.permissions import NO_CHANNELS, ChannelPatterns, PatternError, compile_patterns

# Real tokens are a few hundred bytes; a cap keeps a hostile client from making us base64-decode
# and JSON-parse megabytes before the signature check refuses them.
MAX_TOKEN_LENGTH = 8192
# `sub` is echoed on every message the user publishes ("from") and travels in the bus record of
# each (wsd.ext.record: at most 255 bytes); a user id is short.
MAX_SUB_BYTES = 255


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a connection is, and what it may do, for as long as its token lasts."""

    sub: str
    exp: float  # wall-clock seconds since the epoch; at exp the connection is closed unless refreshed
    subs: ChannelPatterns = NO_CHANNELS  # may subscribe (besides the public channels)
    pubs: ChannelPatterns = NO_CHANNELS  # may publish


@dataclass(frozen=True, slots=True)
class AuthError:
    """A refused token. `reason` is short and safe to send to the client; `kind` is for counters."""

    reason: str
    kind: str  # empty, too_long, malformed, algorithm, signature, expired, immature, audience, issuer, claim
    code: str = UNAUTHORIZED


class TokenVerifier:
    """Verifies tokens against one key (immutable; build a new one when the key is reloaded)."""

    __slots__ = ("key", "audience", "issuer", "leeway_s", "_algorithm", "_prepared_key")

    def __init__(self, key: TokenKey, audience: str | None = None, issuer: str | None = None, leeway_s: float = 0.0):
        self.key = key
        self.audience = audience
        self.issuer = issuer
        self.leeway_s = leeway_s
        # PyJWT's implementation of the one algorithm the key pins, with the key prepared once
        # (jwt.decode prepares it again, and re-checks it, on every call). Imported here: a server
        # without auth never loads PyJWT and cryptography (wsd.server.auth.keys).
        from jwt.algorithms import get_default_algorithms

        self._algorithm = get_default_algorithms()[key.algorithm]
        self._prepared_key = self._algorithm.prepare_key(key.key)

    def verify(self, token: str | bytes, now: float) -> Identity | AuthError:
        """Check `token` at wall-clock time `now`; never raises for anything a client can send."""
        if isinstance(token, str):
            if not token.isascii():
                return AuthError("malformed token", "malformed")
            token = token.encode("ascii")
        elif not isinstance(token, bytes):
            return AuthError("token must be a string", "malformed")
        if not token:
            return AuthError("empty token", "empty")
        if len(token) > MAX_TOKEN_LENGTH:
            return AuthError(f"token over {MAX_TOKEN_LENGTH} bytes", "too_long")
        claims = self._signed_claims(token)
        if isinstance(claims, AuthError):
            return claims
        return self._identity(claims, now)

    def _signed_claims(self, token: bytes) -> dict | AuthError:
        """The JWS compact form (RFC 7515 §7.1): header.payload.signature, each base64url; the header
        names the algorithm, which must be the pinned one; the signature is PyJWT's to check."""
        if token.count(b".") != 2:
            return AuthError("malformed token", "malformed")
        signing_input, _, signature_segment = token.rpartition(b".")
        header_segment, _, payload_segment = signing_input.partition(b".")
        header_json = _base64url_decode(header_segment)
        payload_json = _base64url_decode(payload_segment)
        signature = _base64url_decode(signature_segment)
        if header_json is None or payload_json is None or signature is None:
            return AuthError("malformed token", "malformed")
        try:
            header = orjson.loads(header_json)
        except orjson.JSONDecodeError:
            return AuthError("malformed token", "malformed")
        if not isinstance(header, dict):
            return AuthError("malformed token", "malformed")
        alg = header.get("alg")
        if alg != self.key.algorithm:  # exact: the token never chooses the algorithm
            shown = "none given" if alg is None else repr(alg)[:24]
            return AuthError(f"wrong algorithm {shown}, expected {self.key.algorithm}", "algorithm")
        # No JWS extension is supported (RFC 7515 §4.1.11: a critical one we do not know is a refusal),
        # in particular not RFC 7797's unencoded payloads.
        if "crit" in header or "b64" in header:
            return AuthError("unsupported critical header", "malformed")
        if "kid" in header and not isinstance(header["kid"], str):
            return AuthError("malformed token", "malformed")
        if not self._algorithm.verify(signing_input, self._prepared_key, signature):
            return AuthError("bad signature", "signature")
        # Only a signed payload is parsed: a forger learns nothing from the claims' reasons.
        try:
            claims = orjson.loads(payload_json)
        except orjson.JSONDecodeError:
            return AuthError("malformed token", "malformed")
        if not isinstance(claims, dict):
            return AuthError("malformed token", "malformed")
        return claims

    def _identity(self, claims: dict, now: float) -> Identity | AuthError:
        for required in ("sub", "exp"):
            if required not in claims:
                return AuthError(f"missing {required}", "claim")
        sub = claims["sub"]
        if not isinstance(sub, str):
            return AuthError("bad sub: must be a string", "claim")
        if not sub:
            return AuthError("bad sub: empty", "claim")
        if len(sub) > MAX_SUB_BYTES // 4 and len(sub.encode()) > MAX_SUB_BYTES:
            return AuthError(f"bad sub: over {MAX_SUB_BYTES} bytes (UTF-8)", "claim")
        if "jti" in claims and not isinstance(claims["jti"], str):
            return AuthError("bad jti: must be a string", "claim")
        exp = _number(claims["exp"])
        if exp is None:
            return AuthError("bad exp: must be a number of seconds since the epoch", "claim")
        nbf = None
        if "nbf" in claims:
            nbf = _number(claims["nbf"])
            if nbf is None:
                return AuthError("bad nbf: must be a number of seconds since the epoch", "claim")
        # RFC 7519: the token is valid before exp, not at it; and not before nbf.
        if now >= exp + self.leeway_s:
            return AuthError("token expired", "expired")
        if nbf is not None and now + self.leeway_s < nbf:
            return AuthError("token not yet valid", "immature")
        if self.issuer is not None:
            if "iss" not in claims:
                return AuthError("missing iss", "issuer")
            if claims["iss"] != self.issuer:
                return AuthError("wrong issuer", "issuer")
        if self.audience is not None:
            aud = claims.get("aud")
            if not aud:
                return AuthError("missing aud", "audience")
            audiences = [aud] if isinstance(aud, str) else aud
            if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
                return AuthError("wrong audience", "audience")
            if self.audience not in audiences:
                return AuthError("wrong audience", "audience")
        subs = _patterns(claims, "subs")
        if isinstance(subs, AuthError):
            return subs
        pubs = _patterns(claims, "pubs")
        if isinstance(pubs, AuthError):
            return pubs
        return Identity(sub, float(exp), subs, pubs)


_BASE64URL = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_TO_STANDARD = bytes.maketrans(b"-_", b"+/")


def _base64url_decode(segment: bytes) -> bytes | None:
    """Strict, canonical base64url (RFC 7515 §2: no padding; a trailing "=" or two is tolerated, as
    PyJWT does): None for anything else, including encodings whose unused bits are not zero."""
    stripped = segment.rstrip(b"=")
    padding = len(segment) - len(stripped)
    if padding > 2 or (padding and len(segment) % 4) or len(stripped) % 4 == 1:
        return None
    if stripped.translate(None, _BASE64URL):  # a character outside the alphabet
        return None
    standard = stripped.translate(_TO_STANDARD)
    try:
        decoded = binascii.a2b_base64(standard + b"=" * (-len(standard) % 4), strict_mode=True)
    except binascii.Error:
        return None
    if binascii.b2a_base64(decoded, newline=False).rstrip(b"=") != standard:
        return None
    return decoded


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _patterns(claims: dict, name: str) -> ChannelPatterns | AuthError:
    value = claims.get(name)
    if value is None:
        return NO_CHANNELS
    if not isinstance(value, list):
        return AuthError(f"bad {name}: must be a list of channel patterns", "claim")
    try:
        return compile_patterns(value)
    except PatternError as exc:
        return AuthError(f"bad {name}: {exc}"[:200], "claim")
