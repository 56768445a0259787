"""The decisions a connection meets, from its handshake to its token's expiry, free of I/O.

The worker wires these to picows; each is a plain call on values:

- handshake: `authenticate_target(target, now)` (or `authenticate_query(token, now)`) → an
  `Identity` (go on), an `AuthError` (HTTP 401 with `http_refusal_body(error)`), or
  `NEEDS_AUTH_MESSAGE` (no `token` parameter: upgrade, and expect `auth` first, by
  `auth_deadline(opened_at)`).
- session: `authenticate_message(identity, token, request_id, now)` for each `auth` op (the first
  one and refreshes) → an `AuthOutcome` (the identity after it, the reply, a close if any, the new
  deadline); `check_subscribe` / `check_publish` / `check_other` for every other op → None (serve
  it) or a `Refusal` (`err` with code `unauthorized` or `forbidden`; the connection stays open).
- deadline: `deadline_close(identity, now)` when a connection's deadline passes → the close
  (1008 `token expired`, or 1008 on the auth timeout), or None if a refresh moved it.

With auth off (no key configured) every connection is `ANONYMOUS`, every check passes and
`authenticate_message` answers `ok`, so a client that sends a token to an open server still works.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from wsd.server.auth import FORBIDDEN, POLICY_VIOLATION, UNAUTHORIZED
from wsd.server.auth.keys import AuthSettings, load_token_key
from wsd.server.auth.permissions import AccessPolicy, compile_patterns
from wsd.server.auth.replies import Refusal, close_reason
from wsd.server.auth.tokens import AuthError, Identity, TokenVerifier

DEFAULT_AUTH_TIMEOUT_S = 5.0

TOKEN_EXPIRED = "token expired"

ANONYMOUS = Identity(sub="", exp=math.inf, subs=compile_patterns(["*"]), pubs=compile_patterns(["*"]))


class _NeedsAuthMessage:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEEDS_AUTH_MESSAGE"


NEEDS_AUTH_MESSAGE = _NeedsAuthMessage()


@dataclass(frozen=True, slots=True)
class AuthOutcome:
    """What an `auth` message did: the connection's identity after it (None: still unauthenticated),
    the reply to send, a close to do after the reply (code, reason) or None, and the connection's
    deadline to schedule (None: unchanged)."""

    identity: Identity | None
    reply: bytes
    close: tuple[int, str] | None = None
    deadline: float | None = None


def http_refusal_body(error: AuthError) -> bytes:
    """The JSON body of the handshake's 401."""
    return orjson.dumps({"error": f"{error.code}: {error.reason}"})


def token_from_target(target: str | bytes) -> str | None | AuthError:
    """The `token` query parameter of a request target (`/ws?token=...`): None when absent, the
    value (maybe "") when present once, an AuthError when given twice."""
    if isinstance(target, bytes):
        target = target.decode("latin-1")
    query = urlsplit(target).query
    if "token" not in query:
        return None
    values = parse_qs(query, keep_blank_values=True).get("token")
    if values is None:
        return None
    if len(values) > 1:
        return AuthError("more than one token parameter", "malformed")
    return values[0]


def _exp_json(exp: float) -> int | float:
    return int(exp) if float(exp).is_integer() else exp


class AuthGate:
    """One worker's auth decisions. Immutable: on reload build a new one (`from_settings` re-reads the key)."""

    __slots__ = ("verifier", "policy", "auth_timeout_s")

    def __init__(
        self,
        verifier: TokenVerifier | None,
        policy: AccessPolicy | None = None,
        auth_timeout_s: float = DEFAULT_AUTH_TIMEOUT_S,
    ):
        if not auth_timeout_s > 0:
            raise ValueError(f"--auth-timeout must be a positive number of seconds, got {auth_timeout_s!r}")
        self.verifier = verifier
        self.policy = policy or AccessPolicy()
        self.auth_timeout_s = auth_timeout_s

    @classmethod
    def from_settings(cls, settings: AuthSettings, auth_timeout_s: float = DEFAULT_AUTH_TIMEOUT_S) -> AuthGate:
        """Load the key the settings name (raises AuthSettingsError) and build the gate."""
        key = load_token_key(settings)
        verifier = None if key is None else TokenVerifier(key, settings.audience, settings.issuer)
        return cls(verifier, AccessPolicy(compile_patterns(settings.public_channels)), auth_timeout_s)

    @property
    def enabled(self) -> bool:
        return self.verifier is not None

    # ---- the handshake --------------------------------------------------------------------

    def authenticate_query(self, token: str | None, now: float) -> Identity | AuthError | _NeedsAuthMessage:
        """`?token=` given (str, maybe empty) or not (None) → go on, 401, or wait for `auth`."""
        if self.verifier is None:
            return ANONYMOUS  # auth off: a token is not even read, as before issue 10
        if token is None:
            return NEEDS_AUTH_MESSAGE
        return self.verifier.verify(token, now)

    def authenticate_target(self, target: str | bytes, now: float) -> Identity | AuthError | _NeedsAuthMessage:
        """`authenticate_query` on the request target's `token` parameter."""
        if self.verifier is None:
            return ANONYMOUS
        token = token_from_target(target)
        if isinstance(token, AuthError):
            return token
        return self.authenticate_query(token, now)

    def auth_deadline(self, opened_at: float) -> float:
        """When a connection that has not sent `auth` is closed."""
        return opened_at + self.auth_timeout_s

    # ---- the session ----------------------------------------------------------------------

    def authenticate_message(
        self, identity: Identity | None, token: object, request_id: Any, now: float
    ) -> AuthOutcome:
        """An `{"op":"auth","token":T,"id":N}` on a connection whose identity is `identity` (None: not
        authenticated yet). First auth: ok, or `err unauthorized` then close 1008. Refresh (already
        authenticated): ok with the new exp for the same `sub`; for another `sub` or a bad token,
        `err unauthorized` and the connection stays as it was (its current token still runs out)."""
        if self.verifier is None:
            return AuthOutcome(identity, orjson.dumps({"op": "ok", "id": request_id}))
        result = (
            self.verifier.verify(token, now)
            if isinstance(token, str)
            else AuthError('auth needs "token": a JWT string', "malformed")
        )
        if isinstance(result, AuthError):
            reply = Refusal(UNAUTHORIZED, result.reason).encode(request_id)
            if identity is None:
                return AuthOutcome(None, reply, (POLICY_VIOLATION, close_reason(f"unauthorized: {result.reason}")))
            return AuthOutcome(identity, reply)
        if identity is not None and result.sub != identity.sub:
            reply = Refusal(UNAUTHORIZED, "the new token is for another user (sub); reconnect to change users")
            return AuthOutcome(identity, reply.encode(request_id))
        reply = orjson.dumps(
            {
                "op": "ok",
                "id": request_id,
                "sub": result.sub,
                "exp": _exp_json(result.exp),
                # Seconds left by the server's clock: a client whose clock is off refreshes in time anyway.
                "ttl": max(0, math.floor(result.exp - now)),
            }
        )
        return AuthOutcome(result, reply, None, result.exp)

    def check_subscribe(self, identity: Identity | None, channel: str) -> Refusal | None:
        if self.verifier is None:
            return None
        if identity is None:
            return NOT_AUTHENTICATED
        if self.policy.may_subscribe(identity, channel):
            return None
        return Refusal(FORBIDDEN, f"not allowed to subscribe to {channel}")

    def check_publish(self, identity: Identity | None, channel: str) -> Refusal | None:
        if self.verifier is None:
            return None
        if identity is None:
            return NOT_AUTHENTICATED
        if self.policy.may_publish(identity, channel):
            return None
        return Refusal(FORBIDDEN, f"not allowed to publish to {channel}")

    def check_other(self, identity: Identity | None) -> Refusal | None:
        """Any other op (`unsub`, `ping`, ...): allowed once authenticated."""
        if self.verifier is None or identity is not None:
            return None
        return NOT_AUTHENTICATED

    # ---- deadlines ------------------------------------------------------------------------

    def deadline_close(self, identity: Identity | None, now: float) -> tuple[int, str] | None:
        """A connection's deadline passed: the close to do, or None if it is still valid (refreshed)."""
        if self.verifier is None:
            return None
        if identity is None:
            return POLICY_VIOLATION, close_reason(f"no auth message within {self.auth_timeout_s:g} s")
        if now >= identity.exp:
            return POLICY_VIOLATION, TOKEN_EXPIRED
        return None


NOT_AUTHENTICATED = Refusal(UNAUTHORIZED, 'authenticate first: send {"op":"auth","token":JWT,"id":N}')
