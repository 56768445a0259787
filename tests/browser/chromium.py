"""Drive a headless Debian Chromium over the DevTools protocol (CDP), with nothing but `websockets`.

`Chromium` starts `/usr/bin/chromium --headless --remote-debugging-port=0` with a throw-away
profile, reads the DevTools address it prints, and opens pages (`BrowserPage`) in which the tests
evaluate JavaScript (`Runtime.evaluate`, awaiting promises, returning JSON values).
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    # Timers of a background tab are not throttled: reconnect delays stay what the client asked.
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
]


def find_chromium() -> str | None:
    """The Chromium executable, or None (the Debian package `chromium` is in system-packages.txt)."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


class JavaScriptError(RuntimeError):
    """An exception thrown by JavaScript evaluated in the page."""


class Chromium:
    """One headless browser process and its DevTools connection; use as a context manager."""

    def __init__(self, executable: str, log_path: Path):
        self.executable = executable
        self.log_path = log_path
        self.profile = Path(tempfile.mkdtemp(prefix="wsd-chromium-"))
        self.proc: subprocess.Popen | None = None
        self.connection: ClientConnection | None = None
        self._ids = itertools.count(1)
        self._drainer: threading.Thread | None = None

    def __enter__(self) -> Chromium:
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [self.executable, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        devtools_url = self._read_devtools_url(timeout=30)
        self.connection = ws_connect(devtools_url, max_size=None, open_timeout=10).__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.connection is not None:
            self.connection.__exit__(None, None, None)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._drainer is not None:
            self._drainer.join(5)
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def _read_devtools_url(self, timeout: float) -> str:
        """Chromium prints `DevTools listening on ws://...` on stderr once it is ready."""
        deadline = time.monotonic() + timeout
        seen = b""
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                raise RuntimeError(f"chromium exited ({self.proc.poll()}) before DevTools was up:\n{seen.decode()}")
            seen += line
            self.log.write(line)
            match = re.search(rb"DevTools listening on (ws://\S+)", line)
            if match:
                # Keep draining stderr into the log so Chromium never blocks on a full pipe.
                self._drainer = threading.Thread(target=self._drain_stderr, daemon=True)
                self._drainer.start()
                return match.group(1).decode()
        raise TimeoutError(f"chromium did not print its DevTools address within {timeout}s:\n{seen.decode()}")

    def _drain_stderr(self) -> None:
        for line in self.proc.stderr:
            if not self.log.closed:
                self.log.write(line)
                self.log.flush()

    def send(self, method: str, params: dict | None = None, session_id: str | None = None, timeout: float = 30) -> dict:
        """One CDP command; returns its result (events that arrive meanwhile are dropped)."""
        command_id = next(self._ids)
        message: dict[str, Any] = {"id": command_id, "method": method, "params": params or {}}
        if session_id is not None:
            message["sessionId"] = session_id
        self.connection.send(json.dumps(message))
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no answer to CDP {method} within {timeout}s")
            reply = json.loads(self.connection.recv(timeout=remaining))
            if reply.get("id") != command_id:
                continue
            if "error" in reply:
                raise RuntimeError(f"CDP {method} failed: {reply['error']}")
            return reply["result"]

    def new_page(self, url: str) -> BrowserPage:
        target_id = self.send("Target.createTarget", {"url": url})["targetId"]
        session_id = self.send("Target.attachToTarget", {"targetId": target_id, "flatten": True})["sessionId"]
        page = BrowserPage(self, session_id)
        page.wait_for("document.readyState === 'complete'")
        return page


class BrowserPage:
    """A tab: evaluate JavaScript in it and wait for conditions."""

    def __init__(self, browser: Chromium, session_id: str):
        self.browser = browser
        self.session_id = session_id

    def evaluate(self, expression: str, timeout: float = 30) -> Any:
        """Evaluate `expression` (awaiting it if it is a promise) and return its value as JSON."""
        result = self.browser.send(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True, "timeout": timeout * 1000},
            session_id=self.session_id, timeout=timeout + 5,
        )  # fmt: skip
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            description = details.get("exception", {}).get("description") or details.get("text")
            raise JavaScriptError(f"{description}\n  in: {expression[:300]}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30, interval: float = 0.05) -> Any:
        """Poll until `expression` is truthy; return its value."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            try:
                value = self.evaluate(expression, timeout=10)
            except JavaScriptError:
                value = None
            if value:
                return value
            time.sleep(interval)
        raise TimeoutError(f"waited {timeout}s for `{expression}` (last value {value!r})")
