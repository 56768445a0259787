"""wsd.js in headless Chromium against a `wsd serve` with auth on: tokens from the demo token server
(docs/examples/issue_token.py serve, the app's backend), refreshed before they expire, across a
rolling reload, with every message once and in order; and the demo page of `make run-auth`."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser.chromium import Chromium
from tests.browser.conftest import open_client_page
from tests.browser.test_wsd_js import (
    FAST_BACKOFF,
    SHORT_DRAIN,
    Publisher,
    assert_complete_and_ordered,
    events,
    rolling_reload,
    wait_until_received,
)

ISSUE_TOKEN = Path(__file__).resolve().parents[2] / "docs" / "examples" / "issue_token.py"
TOKEN_TTL_S = 8
REFRESH_BEFORE_MS = 5000  # so a token is refreshed ~3 s after it was issued (the default is 30 s before exp)


@pytest.fixture(scope="module")
def demo_keys(tmp_path_factory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("demo-auth")
    private, public = directory / "private.pem", directory / "public.pem"
    subprocess.run([sys.executable, str(ISSUE_TOKEN), "new-keypair", str(private), str(public)], check=True,
                   capture_output=True)  # fmt: skip
    return private, public


@pytest.fixture(scope="module")
def token_server(demo_keys) -> Iterator[str]:
    """The demo token server: its /token URL."""
    process = subprocess.Popen(
        [sys.executable, str(ISSUE_TOKEN), "serve", "--private-key", str(demo_keys[0]), "--port", "0",
         "--subs", "seq,feed", "--pubs", "feed", "--ttl", str(TOKEN_TTL_S)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        banner = process.stdout.readline()
        yield banner.split(" on ", 1)[1].split("?", 1)[0]
    finally:
        process.terminate()
        process.wait(10)


def test_tokens_are_refreshed_across_a_rolling_reload_and_nothing_is_lost(
    browser: Chromium, wsd_factory, demo_keys, token_server
):
    server = wsd_factory("--auth-public-key", str(demo_keys[1]), *SHORT_DRAIN, workers=2)
    page, positions = open_client_page(
        browser, server, ["seq"], tokenUrl=f"{token_server}?sub=reader", refreshBefore=REFRESH_BEFORE_MS,
        **FAST_BACKOFF,
    )  # fmt: skip
    assert positions == [{"channel": "seq", "off": 0, "epoch": positions[0]["epoch"]}]
    publisher = Publisher(server.api_url, "seq")
    publisher.start()
    try:
        # A refresh on the open connection before its first token runs out...
        page.wait_for("harness.events.some(e => e.type === 'authenticated' && e.refresh)", timeout=15)
        rolling_reload(server)
        # ...and after the reload (new connection, new token), another refresh, past the first token's exp.
        reconnected_at = len(events(page, "authenticated"))
        page.wait_for(
            f"harness.events.filter(e => e.type === 'authenticated').slice({reconnected_at}).some(e => e.refresh)",
            timeout=15,
        )
    finally:
        publisher.stop()
    messages = wait_until_received(page, "seq", max(publisher.confirmed))
    assert_complete_and_ordered(messages, publisher.confirmed)
    assert events(page, "unauthorized", "forbidden") == []
    closes = events(page, "closed")
    assert closes and all(c["code"] == 1012 and c["reconnect"] for c in closes), closes  # moved by the reload only
    authenticated = events(page, "authenticated")
    assert {e["sub"] for e in authenticated} == {"reader"}
    assert [e["refresh"] for e in authenticated].count(False) == len(closes) + 1  # one per connection
    assert page.evaluate("harness.tokenFetches") >= len(authenticated)
    assert page.evaluate("harness.client.state") == "open"


def test_the_demo_with_tokens_shows_the_verified_author(browser: Chromium, wsd_factory, demo_keys, token_server):
    # `make run-auth`: the demo page, its tokens from the token server named in its URL.
    server = wsd_factory("--auth-public-key", str(demo_keys[1]), workers=1)
    url = f"http://127.0.0.1:{server.port}/?token_url={token_server}"
    tab = browser.new_page(url)
    tab.wait_for("document.querySelector('#state').dataset.state === 'open'", timeout=15)
    tab.evaluate("""(() => {
        document.querySelector('#text').value = 'signed post';
        document.querySelector('#post').requestSubmit();
    })()""")
    tab.wait_for("document.querySelector('#feed').textContent.includes('signed post')", timeout=10)
    author = tab.evaluate("sessionStorage.getItem('wsd-author')")
    shown = tab.evaluate("document.querySelector('#feed li .meta b').textContent")
    assert shown == author and author.startswith("guest-")  # the server's `from`: the token's sub
    server.publish("feed", {"text": "from the backend"})
    tab.wait_for("document.querySelector('#feed').textContent.includes('from the backend')", timeout=10)
    assert tab.evaluate("document.querySelector('#feed li .meta b').textContent") == "backend"
    # Without a token the same page is refused: the server has auth on.
    bare = browser.new_page(f"http://127.0.0.1:{server.port}/")
    bare.wait_for("document.querySelector('#state').dataset.state === 'stopped'", timeout=15)
    assert "1008" in bare.evaluate("document.querySelector('#state').textContent")
