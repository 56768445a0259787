"""The configuration's security settings loaded into what the server uses: the auth gate, the rate
limiter, the Origin policy, the API key and the TLS contexts (docs/auth.md).

`load_security(config)` reads every key, secret and certificate file the config names and turns
each problem into a `ConfigError` that names the setting and the fix. The supervisor calls it once
at start (a bad key file stops `wsd serve` with that message instead of crash-looping workers) and
again before a rolling reload (a broken renewal refuses the reload, and the running workers keep
their keys); each worker process calls it at start, so new processes serve the files as they are
now. `exposure_checks(config)` is the start-up warning (open to anyone) and protected mode (an open
API on a public address refuses to start).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from wsd.server.auth.apikey import ApiKeySettingsError, load_api_key
from wsd.server.auth.exposure import api_protection_error, open_access_warning
from wsd.server.auth.gate import AuthGate
from wsd.server.auth.keys import AuthSettingsError
from wsd.server.auth.origin import OriginPolicy, OriginSettingsError
from wsd.server.auth.ratelimit import RateLimiter
from wsd.server.auth.tls import TLSSettingsError, load_server_context
from wsd.server.control.config import Config, ConfigError, auth_settings

if TYPE_CHECKING:
    import ssl  # only with TLS configured does a process need OpenSSL's contexts


@dataclass(frozen=True, slots=True)
class Security:
    """What one process serves with; immutable (a reload starts new processes)."""

    gate: AuthGate
    rate_limiter: RateLimiter
    origins: OriginPolicy
    api_key: bytes | None
    ws_tls: ssl.SSLContext | None
    api_tls: ssl.SSLContext | None


def load_security(config: Config) -> Security:
    """Read the files the config names; ConfigError for the first that is unusable."""
    try:
        gate = AuthGate.from_settings(auth_settings(config), config.auth_timeout)
        origins = OriginPolicy(None if config.allowed_origins is None else tuple(config.allowed_origins))
        api_key = load_api_key(config.api_key, config.api_key_file)
        ws_tls = api_tls = None
        if config.tls_cert is not None:
            ws_tls = load_server_context(config.tls_cert, config.tls_key)
        if config.api_tls_cert is not None:
            api_tls = load_server_context(
                config.api_tls_cert, config.api_tls_key, cert_flag="--api-tls-cert", key_flag="--api-tls-key"
            )
    except (AuthSettingsError, OriginSettingsError, ApiKeySettingsError, TLSSettingsError) as exc:
        raise ConfigError(str(exc)) from None
    return Security(gate, RateLimiter(config.client_rate), origins, api_key, ws_tls, api_tls)


def exposure_checks(config: Config, security: Security) -> str | None:
    """Protected mode: raises ConfigError when the API is reachable from other machines without a
    key. Returns the WARNING to log when the WebSocket port is reachable and auth is off, or None."""
    refusal = api_protection_error(config.api_host, security.api_key is not None)
    if refusal is not None:
        raise ConfigError(refusal)
    return open_access_warning(config.host, security.gate.enabled)
