"""Is wsd reachable beyond this host without protection? The start-up checks of issue 10.

- `--host` not loopback and no auth configured: start, with a WARNING that anyone may subscribe
  and publish (`open_access_warning`).
- `--api-host` not loopback and no API key: refuse to start (`api_protection_error`), as Redis's
  protected mode does: an open publish API lets anyone publish to any channel.

Loopback is 127.0.0.0/8, ::1 (and ::ffff:127.0.0.0/104) and the name `localhost`. Any other name is
not loopback: a name could resolve anywhere, and `0.0.0.0` / `::` listen on every interface.
"""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    host = host.strip()
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def open_access_warning(host: str, auth_enabled: bool) -> str | None:
    """The WARNING line to log at start, or None."""
    if auth_enabled or is_loopback(host):
        return None
    return (
        f"--host {host} is reachable from other machines and no auth is configured: anyone may subscribe to "
        "and publish on any channel. Set --auth-secret-file or --auth-public-key (docs/auth.md)."
    )


def api_protection_error(api_host: str, api_key_set: bool) -> str | None:
    """The message to refuse to start with, or None."""
    if api_key_set or is_loopback(api_host):
        return None
    return (
        f"refusing to start: --api-host {api_host} is reachable from other machines and no API key is set, so "
        "anyone could publish to any channel. Set --api-key-file FILE (or --api-key KEY), or bind the API to "
        "127.0.0.1 (docs/auth.md)."
    )
