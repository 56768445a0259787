"""`wsd check-config [--config FILE] [flags]`: validates as `wsd serve` would, starts nothing."""

from __future__ import annotations

import glob
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "wsd.toml"


def check_config(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wsd.server", "check-config", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=60)  # fmt: skip


def test_a_valid_file_and_flags_print_ok_and_start_nothing(tmp_path):
    config = tmp_path / "wsd.toml"
    config.write_text(f'port = 9000\nadmin_socket = "{tmp_path}/wsd.sock"\n[serve]\nworkers = 3\nlog_format = "json"\n')
    segments = set(glob.glob("/dev/shm/wsd-*"))
    result = check_config("--config", str(config), "--max-connections", "5000", "--log-level", "debug", cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, "ok\n", "")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wsd.toml"]  # no admin socket
    assert set(glob.glob("/dev/shm/wsd-*")) <= segments  # no bus segment
    assert check_config(cwd=tmp_path).stdout == "ok\n"  # the defaults
    assert check_config("--config", str(EXAMPLE), cwd=tmp_path).returncode == 0  # the deploy example


@pytest.mark.parametrize(
    "text, error",
    [
        ("port = \n", "is not valid TOML"),
        ("prot = 9000\n", "unknown setting 'prot'"),
        ('port = "9000"\n', "port must be an integer, got str '9000'"),
        ("drain_window = true\n", "drain_window must be a number"),
        ("port = 70000\n", "port must be a TCP port 0-65535, got 70000"),
        ("ring_size = 1000\n", "ring_size must be a power of two >= 65536, got 1000"),
        ('log_format = "xml"\n', "log_format must be one of text, json, got 'xml'"),
        ("workers = 0\n", "workers must be a positive integer or 'auto'"),
        ("workers = 500\n", "at most 128 are supported"),
        ("serve = 3\n", "'serve' must be a table"),
    ],
    ids=["unparseable", "unknown-key", "wrong-type", "wrong-type-bool", "port-range", "ring-size", "choice",
         "workers-zero", "workers-too-many", "serve-not-a-table"],
)
def test_a_bad_file_is_an_error_with_exit_1(tmp_path, text, error):
    config = tmp_path / "wsd.toml"
    config.write_text(text)
    result = check_config("--config", str(config), cwd=tmp_path)
    assert result.returncode == 1, result
    assert result.stdout == ""
    assert error in result.stderr, result.stderr
    assert result.stderr.startswith("wsd check-config: ")


@pytest.mark.parametrize(
    "flags, error",
    [
        (["--port", "x"], "must be an integer, got 'x'"),
        (["--port", "70000"], "port must be a TCP port 0-65535"),
        (["--log-format", "xml"], "invalid choice: 'xml'"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["--config", "/nonexistent/wsd.toml"], "config file /nonexistent/wsd.toml does not exist"),
        (["--port", "8080", "--api-port", "8080"], "port and api_port must differ"),
        (["--max-message-size", "1048576", "--ring-size", "1048576"], "does not fit the bus ring"),
    ],
    ids=["not-a-number", "out-of-range", "bad-choice", "unknown-flag", "missing-file", "same-ports", "message-ring"],
)
def test_bad_flags_are_an_error_with_exit_1(tmp_path, flags, error):
    result = check_config(*flags, cwd=tmp_path)
    assert result.returncode == 1, result
    assert error in result.stderr, result.stderr


def test_flags_win_over_the_file_as_for_serve(tmp_path):
    config = tmp_path / "wsd.toml"
    config.write_text("port = 70000\n")
    assert check_config("--config", str(config), cwd=tmp_path).returncode == 1
    # What is checked is what `wsd serve` would run with: the flag's port, not the file's.
    assert check_config("--config", str(config), "--port", "9000", cwd=tmp_path).returncode == 0
    config.write_text("ring_size = 65536\n")
    # The file's ring is too small for the flag's message size: the combination is what is checked.
    result = check_config("--config", str(config), "--max-message-size", "32768", cwd=tmp_path)
    assert result.returncode == 1 and "does not fit the bus ring" in result.stderr
    assert check_config("--config", str(config), "--max-message-size", "8192", cwd=tmp_path).returncode == 0
