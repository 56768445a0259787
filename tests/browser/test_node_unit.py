"""The unit tests of wsd.js (clients/js/wsd.test.mjs, a scripted fake socket) run under `node --test`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CLIENT_DIR = Path(__file__).parent.parent.parent / "clients" / "js"


def test_wsd_js_unit_tests_pass_under_node():
    node = shutil.which("node")
    if node is None:
        pytest.skip("no node: the same client is still tested in Chromium by test_wsd_js.py")
    result = subprocess.run(
        [node, "--test", str(CLIENT_DIR / "wsd.test.mjs")], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
