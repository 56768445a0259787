"""Static pages served on the WebSocket port: the demo at `/` and the browser client at `/wsd.js`."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from picows.common import WSUpgradeResponse

# Package data of wsd.server.static: served the same from a wheel, an sdist or a checkout.
STATIC_DIR = Path(__file__).parent.parent / "static"

_ROUTES = {
    b"/": ("index.html", "text/html; charset=utf-8"),
    b"/index.html": ("index.html", "text/html; charset=utf-8"),
    b"/wsd.js": ("wsd.js", "text/javascript; charset=utf-8"),
}


@cache
def _read(name: str) -> bytes | None:
    try:
        return (STATIC_DIR / name).read_bytes()
    except FileNotFoundError:
        return None


def static_response(path: bytes, slot: int) -> WSUpgradeResponse | None:
    route = _ROUTES.get(path)
    if route is None:
        return None
    body = _read(route[0])
    if body is None:
        return None
    headers = {"Content-Type": route[1], "Cache-Control": "no-cache", "X-Wsd-Worker": str(slot)}
    if route[0] == "wsd.js":
        headers["Access-Control-Allow-Origin"] = "*"  # apps on other origins import the client
    return WSUpgradeResponse.create_ok_response(body, headers)
