"""Connection tokens: a JWT in, an `Identity` or an `AuthError` out (PyJWT does the cryptography).

Claims: `sub` (the user id, required), `exp` (required), optional `nbf`, `subs` and `pubs` (lists of
channel patterns, see permissions), `aud` and `iss` (checked when `--auth-audience` /
`--auth-issuer` are set; ignored otherwise, as in Centrifugo). The signature is checked with the one
algorithm the key pins (keys), before any claim is looked at. Times are checked here against the
clock the caller passes in (wall-clock seconds), so expiry is testable without waiting.

An `AuthError` carries a short reason ("token expired", "bad signature", ...) fit for an HTTP 401
body or an `err` message: it says what is wrong without echoing the token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jwt
from jwt.exceptions import (
    DecodeError,
    InvalidAlgorithmError,
    InvalidAudienceError,
    InvalidIssuerError,
    InvalidJTIError,
    InvalidSignatureError,
    InvalidSubjectError,
    MissingRequiredClaimError,
    PyJWTError,
)

from wsd.server.auth import UNAUTHORIZED
from wsd.server.auth.keys import TokenKey
from wsd.server.auth.permissions import NO_CHANNELS, ChannelPatterns, PatternError, compile_patterns

# Real tokens are a few hundred bytes; a cap keeps a hostile client from making us base64-decode
# and JSON-parse megabytes before the signature check refuses them.
MAX_TOKEN_LENGTH = 8192
# `sub` is echoed on every message the user publishes ("from"); a user id is short.
MAX_SUB_LENGTH = 256


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

    __slots__ = ("key", "audience", "issuer", "leeway_s", "_jwt", "_decode_kwargs")

    def __init__(self, key: TokenKey, audience: str | None = None, issuer: str | None = None, leeway_s: float = 0.0):
        self.key = key
        self.audience = audience
        self.issuer = issuer
        self.leeway_s = leeway_s
        self._jwt = jwt.PyJWT(
            options={
                "verify_signature": True,
                # Times are checked in verify(), against the caller's clock.
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": audience is not None,
                "verify_iss": issuer is not None,
                "verify_sub": True,
                "verify_jti": True,
                "require": ["sub", "exp"],
            }
        )
        self._decode_kwargs = {
            "key": key.key,
            "algorithms": [key.algorithm],  # pinned by the key, never read from the token
            "audience": audience,
            "issuer": issuer,
        }

    def verify(self, token: str | bytes, now: float) -> Identity | AuthError:
        """Check `token` at wall-clock time `now`; never raises for anything a client can send."""
        if not isinstance(token, (str, bytes)):
            return AuthError("token must be a string", "malformed")
        if not token:
            return AuthError("empty token", "empty")
        if len(token) > MAX_TOKEN_LENGTH:
            return AuthError(f"token over {MAX_TOKEN_LENGTH} bytes", "too_long")
        try:
            claims = self._jwt.decode(token, **self._decode_kwargs)
        except InvalidSignatureError:  # before DecodeError, its base class
            return AuthError("bad signature", "signature")
        except InvalidAlgorithmError:
            return AuthError(self._algorithm_reason(token), "algorithm")
        except DecodeError:
            return AuthError("malformed token", "malformed")
        except MissingRequiredClaimError as exc:
            kind = {"aud": "audience", "iss": "issuer"}.get(exc.claim, "claim")
            return AuthError(f"missing {exc.claim}", kind)
        except InvalidAudienceError:
            return AuthError("wrong audience", "audience")
        except InvalidIssuerError:
            return AuthError("wrong issuer", "issuer")
        except InvalidSubjectError:
            return AuthError("bad sub: must be a string", "claim")
        except InvalidJTIError:
            return AuthError("bad jti: must be a string", "claim")
        except PyJWTError:
            return AuthError("invalid token", "malformed")
        except (ValueError, TypeError, UnicodeError):  # defensive: odd input PyJWT does not wrap
            return AuthError("malformed token", "malformed")
        return self._identity(claims, now)

    def _identity(self, claims: dict, now: float) -> Identity | AuthError:
        sub = claims["sub"]  # a string: verify_sub
        if not sub:
            return AuthError("bad sub: empty", "claim")
        if len(sub) > MAX_SUB_LENGTH:
            return AuthError(f"bad sub: over {MAX_SUB_LENGTH} characters", "claim")
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
        subs = _patterns(claims, "subs")
        if isinstance(subs, AuthError):
            return subs
        pubs = _patterns(claims, "pubs")
        if isinstance(pubs, AuthError):
            return pubs
        return Identity(sub, float(exp), subs, pubs)

    def _algorithm_reason(self, token: str | bytes) -> str:
        try:
            alg = jwt.get_unverified_header(token).get("alg")
        except PyJWTError:
            alg = None
        shown = repr(alg)[:24] if alg is not None else "none given"
        return f"wrong algorithm {shown}, expected {self.key.algorithm}"


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
