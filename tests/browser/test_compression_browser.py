"""Chromium offers permessage-deflate on every WebSocket: against a real `wsd serve` it is
negotiated, and large messages (compressed by the server) reach the page, raw and through /wsd.js."""

from __future__ import annotations

import json

from tests.browser.chromium import Chromium
from tests.browser.conftest import open_client_page

BIG = {"kind": "comment", "text": "What a view! We went there last summer. " * 40, "likes": 128}

OPEN_RAW_SOCKET = """
new Promise((resolve, reject) => {
  const ws = new WebSocket(%s);
  window.rawGot = [];
  ws.onmessage = (event) => window.rawGot.push(JSON.parse(event.data));
  ws.onerror = () => reject(new Error("websocket error"));
  ws.onopen = () => { ws.send(JSON.stringify({op: "sub", ch: "feed", id: 1})); resolve(ws.extensions); };
})
"""


def test_chromium_negotiates_deflate_and_gets_compressed_messages_intact(browser: Chromium, wsd_factory):
    wsd = wsd_factory(workers=1)
    page = browser.new_page(f"http://127.0.0.1:{wsd.port}/healthz")
    extensions = page.evaluate(OPEN_RAW_SOCKET % json.dumps(wsd.url))
    assert extensions == "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    page.wait_for("window.rawGot.length === 1")  # the sub's ok
    client_page, _ = open_client_page(browser, wsd, ["feed"])
    offsets = [wsd.publish("feed", BIG), wsd.publish("feed", {"small": 1})]
    got = page.wait_for("window.rawGot.length === 3 && window.rawGot.slice(1)")
    assert [(m["off"], m["data"]) for m in got] == list(zip(offsets, [BIG, {"small": 1}], strict=True))
    through_client = client_page.wait_for("(harness.messages.feed || []).length === 2 && harness.messages.feed")
    assert [m["data"] for m in through_client] == [BIG, {"small": 1}], through_client
