"""Fixtures of the browser tests: one headless Chromium per module, and pages running the real /wsd.js."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.wsd_process import WsdProcess
from tests.browser.chromium import BrowserPage, Chromium, find_chromium

HARNESS_JS = (Path(__file__).parent / "harness.js").read_text()


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator[Chromium]:
    executable = find_chromium()
    if executable is None:
        pytest.skip("no chromium: `make test` as root installs it (system-packages.txt), or apt-get install chromium")
    with Chromium(executable, tmp_path_factory.mktemp("chromium") / "chromium.log") as chromium:
        yield chromium


def open_client_page(
    browser: Chromium, server: WsdProcess, channels: list[str], **options: object
) -> tuple[BrowserPage, list[dict]]:
    """A tab on the server's origin whose `harness` has loaded /wsd.js and subscribed to `channels`.

    The page is a plain-text page of the same origin (`/healthz`), so `import("/wsd.js")` needs no
    CORS; returns the page and the `subscribe` results.
    """
    page = browser.new_page(f"http://127.0.0.1:{server.port}/healthz")
    page.evaluate(HARNESS_JS)
    positions = page.evaluate(f"harness.start({json.dumps(server.url)}, {json.dumps(channels)}, {json.dumps(options)})")
    return page, positions
