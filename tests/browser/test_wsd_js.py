"""wsd.js in headless Chromium against a real `wsd serve`: every message once and in order across a
rolling reload, a `gap` and a clean continuation across a full stop/start, and the demo page."""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from harness.wsd_process import WsdProcess
from tests.browser.chromium import BrowserPage, Chromium
from tests.browser.conftest import open_client_page

# Short backoff so reconnects happen within a test's patience (the defaults are 0.5 s → 20 s).
FAST_BACKOFF = {"backoffBase": 100, "backoffCap": 1000}
# A reload's old workers close their clients (1012) over this many seconds instead of 30.
SHORT_DRAIN = ("--drain-window", "1")


class Publisher(threading.Thread):
    """Publishes 0, 1, 2, … to a channel over the HTTP API until stopped, retrying while wsd restarts.

    `confirmed` maps each offset the server reported to the value published with it: the sequence
    the page must end up with.
    """

    def __init__(self, api_url: str, channel: str, interval_s: float = 0.01):
        super().__init__(daemon=True)
        self.api_url = api_url
        self.channel = channel
        self.interval_s = interval_s
        self.confirmed: dict[int, int] = {}
        self.retries = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        value = 0
        while not self._stop_event.is_set():
            offset = self._publish(value)
            if offset is None:
                self.retries += 1
                time.sleep(0.05)
                continue
            self.confirmed[offset] = value
            value += 1
            time.sleep(self.interval_s)

    def _publish(self, value: int) -> int | None:
        body = json.dumps({"channel": self.channel, "data": value}).encode()
        headers = {"Content-Type": "application/json"}
        request = urllib.request.Request(f"{self.api_url}/api/publish", data=body, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.loads(response.read())["offset"]
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None  # refused, reset or 503 while a worker restarts: try again

    def stop(self) -> None:
        self._stop_event.set()
        self.join(30)


def received(page: BrowserPage, channel: str) -> list[dict]:
    return page.evaluate(f"harness.messages[{json.dumps(channel)}]")


def events(page: BrowserPage, *types: str) -> list[dict]:
    all_events = page.evaluate("harness.events")
    return [event for event in all_events if not types or event["type"] in types]


def wait_until_received(page: BrowserPage, channel: str, last_offset: int, timeout: float = 30) -> list[dict]:
    page.wait_for(
        f"(m => m.length && m[m.length - 1].off >= {last_offset})(harness.messages[{json.dumps(channel)}])",
        timeout=timeout,
    )
    return received(page, channel)


def assert_complete_and_ordered(messages: list[dict], confirmed: dict[int, int]) -> None:
    """Offsets 1…N each once in order, and every publish the server confirmed with its value."""
    offsets = [message["off"] for message in messages]
    assert offsets == list(range(1, len(offsets) + 1)), f"holes or duplicates in offsets: {offsets}"
    by_offset = {message["off"]: message["data"] for message in messages}
    missing = {off: value for off, value in confirmed.items() if by_offset.get(off) != value}
    assert not missing, f"confirmed publishes missing or different on the page: {missing}"


def rolling_reload(server: WsdProcess, timeout: float = 60) -> None:
    """`wsd ctl reload`, then wait until every slot is served by a new process and the old ones are gone."""
    old_pids = set(server.worker_pids())
    server.ctl("reload")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = server.status()
        pids = {worker["pid"] for worker in status["workers"]}
        if status["supervisor"]["state"] == "running" and not pids & old_pids and len(pids) == server.workers:
            return
        time.sleep(0.1)
    raise TimeoutError(f"reload not done after {timeout}s: {server.status()}\n{server.read_log()}")


def restarted_on_same_ports(old: WsdProcess, workdir: Path) -> WsdProcess:
    new = WsdProcess(workdir, workers=old.workers, flags=old.flags)
    new.port, new.api_port = old.port, old.api_port
    return new


def test_page_gets_every_message_once_in_order_across_a_rolling_reload(browser: Chromium, wsd_factory):
    server = wsd_factory(*SHORT_DRAIN, workers=2)
    page, _ = open_client_page(browser, server, ["seq"], **FAST_BACKOFF)
    publisher = Publisher(server.api_url, "seq")
    publisher.start()
    try:
        time.sleep(0.5)
        rolling_reload(server)
        time.sleep(0.5)
    finally:
        publisher.stop()
    assert len(publisher.confirmed) > 20
    messages = wait_until_received(page, "seq", max(publisher.confirmed))
    assert events(page, "gap") == []
    assert_complete_and_ordered(messages, publisher.confirmed)
    types = [event["type"] for event in events(page, "closed", "connecting", "open", "resumed")]
    first_close = types.index("closed")
    assert types[first_close : first_close + 4] == ["closed", "connecting", "open", "resumed"], types
    closes = events(page, "closed")
    assert all(event["reconnect"] for event in closes)
    assert 1012 in {event["code"] for event in closes}, closes  # the reload's drain says "restarting"


def test_full_stop_and_start_is_a_gap_then_the_feed_continues_in_order(browser: Chromium, wsd_factory, tmp_path):
    server = wsd_factory(workers=2)
    page, _ = open_client_page(browser, server, ["feed"], **FAST_BACKOFF)
    before = [server.publish("feed", f"before {i}") for i in range(5)]
    wait_until_received(page, "feed", before[-1])

    server.signal(signal.SIGINT)
    assert server.wait(30) == 0
    page.wait_for("harness.events.filter(e => e.type === 'connecting').length >= 4", timeout=20)

    restarted = restarted_on_same_ports(server, tmp_path / "restarted")
    try:
        restarted.start()
        resumed = page.wait_for("harness.events.find(e => e.type === 'resumed')", timeout=20)
        after = [restarted.publish("feed", f"after {i}") for i in range(5)]
        page.wait_for(f"harness.messages.feed.length >= {len(before) + len(after)}", timeout=20)
    finally:
        restarted.kill()

    messages = received(page, "feed")
    assert [m["data"] for m in messages] == [f"before {i}" for i in range(5)] + [f"after {i}" for i in range(5)]
    old_epoch, new_epoch = messages[0]["epoch"], messages[-1]["epoch"]
    assert old_epoch != new_epoch
    assert [m["off"] for m in messages] == before + after
    [gap] = events(page, "gap")
    assert gap["reason"] == "epoch"
    assert (gap["channel"], gap["previousOff"], gap["previousEpoch"], gap["epoch"]) == ("feed", 5, old_epoch, new_epoch)
    assert resumed["channels"][0]["recovered"] is False

    [closed, *_] = events(page, "closed")
    assert closed["code"] == 1001 and closed["reconnect"] is True
    # While the server was down: attempts 1, 2, 3, … each waiting below min(cap, base * 2**(attempt - 1)).
    retries = [event for event in events(page, "connecting") if event["attempt"] > 0]
    assert [event["attempt"] for event in retries[:4]] == [1, 2, 3, 4]
    for event in retries:
        ceiling = min(FAST_BACKOFF["backoffCap"], FAST_BACKOFF["backoffBase"] * 2 ** (event["attempt"] - 1))
        assert 0 <= event["delay"] < ceiling


def test_backoff_bounds_and_dedupe_in_the_browser(browser: Chromium, wsd_factory):
    server = wsd_factory(workers=1)
    page, _ = open_client_page(browser, server, [])
    bounds = page.evaluate(
        """(() => {
          const { backoffDelay } = harness.module;
          const out = [];
          for (let attempt = 0; attempt < 12; attempt++) {
            let max = 0, min = Infinity;
            for (let i = 0; i < 2000; i++) {
              const d = backoffDelay(attempt, 500, 20000);
              max = Math.max(max, d);
              min = Math.min(min, d);
            }
            out.push({ attempt, min, max, ceiling: Math.min(20000, 500 * 2 ** attempt) });
          }
          return out;
        })()"""
    )
    for row in bounds:
        assert 0 <= row["min"] < row["ceiling"] * 0.05, row  # full jitter reaches down to ~0
        assert row["ceiling"] * 0.95 < row["max"] < row["ceiling"], row  # and up to the ceiling
    # Dedupe, with a scripted socket standing in for the server.
    seen = page.evaluate(
        """(async () => {
          class ScriptedSocket {
            constructor(url) { ScriptedSocket.last = this; this.sent = []; }
            send(text) { this.sent.push(JSON.parse(text)); }
            close() {}
          }
          const client = harness.module.connect("ws://unused.invalid/ws", { WebSocket: ScriptedSocket });
          const seen = [];
          client.subscribe("c", (data, meta) => seen.push(meta.off));
          await new Promise((resolve) => setTimeout(resolve, 20));
          const socket = ScriptedSocket.last;
          socket.onopen({});
          socket.onmessage({ data: JSON.stringify({ op: "ok", id: socket.sent[0].id, off: 1, epoch: 1 }) });
          for (const off of [1, 2, 2, 3, 1, 3, 4]) {
            socket.onmessage({ data: JSON.stringify({ op: "msg", ch: "c", off, data: off }) });
          }
          client.close();
          return seen;
        })()"""
    )
    assert seen == [2, 3, 4]


def test_demo_page_shows_a_post_in_every_open_tab_and_survives_a_reload(browser: Chromium, wsd_factory):
    server = wsd_factory(*SHORT_DRAIN, workers=2)
    url = f"http://127.0.0.1:{server.port}/"
    tabs = [browser.new_page(url), browser.new_page(url)]
    for tab in tabs:
        tab.wait_for("document.querySelector('#state').dataset.state === 'open'", timeout=15)
    post = """(() => {
        const input = document.querySelector('#text');
        input.value = %s;
        document.querySelector('#post').requestSubmit();
    })()"""
    tabs[0].evaluate(post % json.dumps("hello from tab 0"))
    for tab in tabs:
        tab.wait_for("document.querySelector('#feed').textContent.includes('hello from tab 0')", timeout=10)
    worker_text = tabs[0].evaluate("document.querySelector('#worker').textContent")
    assert worker_text.isdigit(), worker_text  # from the `worker` field of the sub reply

    rolling_reload(server)
    server.publish("feed", {"text": "after the reload"})
    for tab in tabs:
        tab.wait_for("document.querySelector('#feed').textContent.includes('after the reload')", timeout=20)
        texts = tab.evaluate("[...document.querySelectorAll('#feed li .text')].map(e => e.textContent)")
        assert texts.count("hello from tab 0") == 1, texts
