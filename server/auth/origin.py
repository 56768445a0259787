"""The `Origin` check of the WebSocket handshake (`--allowed-origins`).

Browsers send the page's origin with every WebSocket handshake, and a WebSocket is not subject to
the same-origin policy: without this check any page on the Internet can open `/ws` with the
visitor's cookies. With a list, a handshake is allowed when its origin equals one on the list in
scheme, host and port (exactly: no wildcards, no subdomains); else it gets HTTP 403.

Comparison is on the normalised form: scheme and host lower-cased (both are case-insensitive), the
default port dropped (80 for http/ws, 443 for https/wss), IPv6 hosts in brackets, non-ASCII host
names in their IDNA (punycode) form, which is what browsers send. A list entry may end in one `/`
(dropped); any other path, a query, a fragment or user info is a configuration error.

- No `Origin` header: allowed. Browsers always send one on a WebSocket handshake, so its absence
  means a non-browser client (a backend, a mobile app, curl), which Origin cannot protect against
  anyway: tokens do that.
- `Origin: null` (sandboxed iframes, `file:` pages, some redirects): opaque, any page can produce it,
  so it is refused when a list is set, unless the list contains the literal `null`.
- No list (the default): every origin is allowed, as before issue 10.
"""

from __future__ import annotations

from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
NULL_ORIGIN = "null"


class OriginSettingsError(ValueError):
    """An --allowed-origins entry is not an origin; the message says which and why."""


def normalize_origin(value: str) -> str | None:
    """`HTTPS://Example.COM:443` → `https://example.com`; None if `value` is not a valid origin."""
    if value == NULL_ORIGIN:
        return NULL_ORIGIN
    try:
        return _normalize(value, allow_trailing_slash=False)
    except ValueError:  # UnicodeError is a ValueError
        return None


def _normalize(value: str, allow_trailing_slash: bool) -> str:
    if any(c.isspace() for c in value) or "," in value:
        raise ValueError("an origin has no spaces or commas")
    parts = urlsplit(value)
    scheme = parts.scheme.lower()
    if not scheme or "://" not in value:
        raise ValueError("an origin is scheme://host[:port]")
    if parts.username is not None or parts.password is not None:
        raise ValueError("an origin has no user info")
    if parts.query or parts.fragment or "?" in value or "#" in value:
        raise ValueError("an origin has no query or fragment")
    if parts.path and not (allow_trailing_slash and parts.path == "/"):
        raise ValueError(f"an origin has no path ({parts.path!r})")
    host = parts.hostname  # lower-cased, IPv6 brackets removed
    if not host:
        raise ValueError("an origin needs a host")
    if not host.isascii():
        host = host.encode("idna").decode("ascii")  # UnicodeError if it cannot be
    port = parts.port  # ValueError for a non-numeric or out-of-range port
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


class OriginPolicy:
    """`allows(origin_header)` → bool. Build with the configured list, or None for "any origin"."""

    __slots__ = ("allowed",)

    def __init__(self, allowed: list[str] | tuple[str, ...] | None):
        if allowed is None:
            self.allowed: frozenset[str] | None = None
            return
        normalized = set()
        for entry in allowed:
            if not isinstance(entry, str) or not entry.strip():
                raise OriginSettingsError(f"--allowed-origins: empty or non-string entry {entry!r}")
            entry = entry.strip()
            if entry == NULL_ORIGIN:
                normalized.add(NULL_ORIGIN)
                continue
            if "*" in entry:
                raise OriginSettingsError(
                    f"--allowed-origins: {entry!r}: wildcards are not supported (origins match exactly); "
                    "leave --allowed-origins out to allow any origin"
                )
            try:
                normalized.add(_normalize(entry, allow_trailing_slash=True))
            except ValueError as exc:
                raise OriginSettingsError(
                    f"--allowed-origins: {entry!r} is not an origin: {exc} (e.g. https://app.example.com:8443)"
                ) from None
        if not normalized:
            raise OriginSettingsError("--allowed-origins: the list is empty; leave it out to allow any origin")
        self.allowed = frozenset(normalized)

    def allows(self, origin: str | None) -> bool:
        """Whether a handshake with this `Origin` header value (None: no header) may proceed."""
        if self.allowed is None or origin is None:
            return True
        if origin in self.allowed:  # browsers send origins normalised: usually one set lookup
            return True
        normalized = normalize_origin(origin)
        return normalized is not None and normalized in self.allowed

    def refusal(self, origin: str) -> str:
        """The short text of the 403 body."""
        shown = origin if len(origin) <= 80 else origin[:80] + "..."
        return f"origin {shown!r} is not allowed"


def parse_origin_list(text: str) -> tuple[str, ...]:
    """`--allowed-origins https://a.example,https://b.example:8443` → the entries."""
    return tuple(item.strip() for item in text.split(",") if item.strip())
