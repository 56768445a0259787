"""Autobahn|Testsuite against a real wsd echo endpoint: no FAILED case beyond the documented ones.

Starts the server under test as a subprocess (`wsd serve --echo-path /echo` when it offers that
flag, else tests/autobahn/echo_server.py), runs the fuzzingclient through
tests/autobahn/run_fuzzingclient.py and checks its verdict and the report. The first run also
builds .venv-autobahn (Python 2.7, about a minute).

Every case of 1.*-10.* runs, and of permessage-deflate (12.*, 13.*: 216 cases of 1,000 messages
each, half an hour on this box, which `make autobahn` runs in full) a sample: each of the seven
negotiations of 13.* with small messages and with fragmented ones, and the five data sets of 12.*.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.autobahn import run_fuzzingclient as runner

DEFLATE_SAMPLE = (
    # 12.N.1: 16-byte messages of each data set (JSON, a bitmap, German text, HTML, a PDF); 12.1.4:
    # 1 KiB; 12.1.11: 8 KiB messages fragmented into 256-byte frames.
    *(f"12.{data_set}.1" for data_set in range(1, 6)),
    "12.1.4",
    "12.1.11",
    # 13.N.*: each offer/accept combination, with 64-byte messages and fragmented 8 KiB ones.
    *(f"13.{negotiation}.{size}" for negotiation in range(1, 8) for size in (2, 11)),
)
CASES = tuple(f"{section}.*" for section in range(1, 11)) + DEFLATE_SAMPLE


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_autobahn_fuzzingclient_finds_no_unexpected_failure(tmp_path):
    runner.ensure_wstest()  # set up outside the timed part, with its own error message
    port = runner.free_port()
    server_kind, command = runner.server_command(port, tmp_path)
    print(f"server under test ({server_kind}): {' '.join(command)}")
    server = runner.start_server(command, tmp_path / "server.log")
    reports_dir = tmp_path / "reports"
    try:
        runner.wait_for_port("127.0.0.1", port, 30, server)
        result = subprocess.run(
            [sys.executable, runner.__file__, "--url", f"ws://127.0.0.1:{port}{runner.ECHO_PATH}",
             "--reports-dir", str(reports_dir), "--cases", ",".join(CASES)],
            capture_output=True, text=True, timeout=840,
        )  # fmt: skip
        server_alive = server.poll() is None
    finally:
        runner.stop_server(server)
    print(result.stdout, result.stderr)

    results = runner.load_results(reports_dir)
    assert results, f"Autobahn ran no case against the {server_kind} server:\n{result.stdout}{result.stderr}"
    failed = sorted(case for case, entry in results.items() if entry["behavior"] == "FAILED")
    unexpected = [case for case in failed if case not in runner.KNOWN_UNFIXABLE]
    assert not unexpected, f"FAILED against the {server_kind} server: {unexpected}\n{result.stdout}"
    assert result.returncode == 0, f"runner exited {result.returncode}:\n{result.stdout}{result.stderr}"
    assert server_alive, (
        f"the {server_kind} server died during the suite:\n"
        + ((tmp_path / "server.log").read_text(errors="replace")[-3000:])
    )
    assert len(results) > 250, f"only {len(results)} cases ran; the suite has about 300 without 12.*/13.*"
    deflate = [case for case in results if case.startswith(("12.", "13."))]
    assert len(deflate) == len(DEFLATE_SAMPLE), f"permessage-deflate cases that ran: {sorted(deflate)}"
    assert all(results[case]["behavior"] == "OK" for case in deflate), {case: results[case] for case in deflate}
