"""Bad config files are ConfigErrors, whatever is wrong with them: the inputs tests/fuzz/fuzz_config.py
found getting past the loader as other exceptions (a traceback at start, a crash on reload)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from wsd.server.control.config import ConfigError, build_config, load_toml

BAD_FILES = {
    "latin-1": (b'log_level = "caf\xe9"\n', "is not UTF-8 text (byte 16)"),
    "integer of 5000 digits": (b"port = 1" + b"0" * 5000 + b"\n", "is not valid TOML"),
    "arrays nested 3000 deep": (b"admin_socket = " + b"[" * 3000, "nested too deeply"),
    "inline tables nested 2000 deep": (b"admin_socket = " + b"{a=" * 2000, "nested too deeply"),
    "float setting with a 400-digit integer": (b"stop_timeout = 1" + b"0" * 400 + b"\n", "too large"),
}


@pytest.mark.parametrize("content, message", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_a_bad_config_file_is_a_config_error(tmp_path, content, message):
    path = tmp_path / "wsd.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match="stop_timeout" if b"stop_timeout" in content else str(path)) as raised:
        build_config(load_toml(str(path)), {})
    assert message in str(raised.value)


def test_serve_with_a_file_that_is_not_utf8_exits_2_with_the_reason(tmp_path):
    path = tmp_path / "wsd.toml"
    path.write_bytes(BAD_FILES["latin-1"][0])
    result = subprocess.run(
        [sys.executable, "-m", "wsd.server", "serve", "--config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stderr
    assert "is not UTF-8 text" in result.stderr and "Traceback" not in result.stderr
