"""Logs of a real server: `--log-format json` lines parse one by one (stdout stays empty), lines about
a connection carry its id and peer, repeated warnings are rate-limited with the count suppressed,
and `wsd ctl log-level` changes the level of the supervisor and every worker while it runs."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from harness.wsd_process import WsdProcess
from tests.operations.helpers import NO_PINGS, Client, clients_on_every_worker, http, scrape, wait_for
from tests.raw_ws import RawWebSocket

RFC3339_MS_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


class SplitOutputWsd(WsdProcess):
    """wsd with stdout and stderr in two files (WsdProcess merges them)."""

    def start(self, wait: bool = True) -> None:
        self.stdout_path = self.workdir / "stdout"
        self.log_path = self.workdir / "stderr"
        self.log = open(self.log_path, "ab")
        self.stdout = open(self.stdout_path, "ab")
        self.proc = subprocess.Popen(self.command(), stdout=self.stdout, stderr=self.log, cwd=self.workdir)
        if wait:
            self.wait_ready()

    def lines(self) -> list[dict]:
        """Every stderr line, parsed (each must be one JSON object)."""
        parsed = []
        for line in self.log_path.read_text().splitlines():
            value = json.loads(line)
            assert isinstance(value, dict), line
            parsed.append(value)
        return parsed


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    wsd = SplitOutputWsd(tmp_path_factory.mktemp("logs"), workers=2,
                         flags=["--log-format", "json", "--write-buffer-limit", "65536", *NO_PINGS])  # fmt: skip
    wsd.start()
    yield wsd
    wsd.kill()


def test_repeated_warnings_are_written_once_per_10_s_with_the_count_suppressed(server):
    slow = []
    for _ in range(6):
        client = RawWebSocket("127.0.0.1", server.port, rcvbuf=4096)
        client.send_text(json.dumps({"op": "sub", "ch": "flood", "id": 1}))
        assert json.loads(client.recv_frame()[1])["op"] == "ok"
        slow.append(client)
    body = json.dumps([{"channel": "flood", "data": "f" * 3000}] * 250).encode()
    for _ in range(8):  # every one of them falls far behind: cut off as slow readers, each a warning
        status, _, answer = http(f"{server.api_url}/api/publish_batch", body, {"Content-Type": "application/json"})
        assert status == 200, answer
    wait_for(lambda: scrape(server).value("wsd_slow_disconnects_total") >= 6, timeout=10)
    for client in slow:
        client.close()

    def cut_off_lines() -> list[dict]:
        return [line for line in server.lines() if line["event"].startswith("worker ") and "slow reader" in
                line["event"]]

    first = cut_off_lines()
    # At most one line per process in the first 10 s, however many were cut off.
    assert 1 <= len(first) <= 2 and len({line["process"] for line in first}) == len(first), first
    assert all("suppressed" not in line for line in first)
    # The last held-back line of each burst is written once its 10 s are over, with the count.
    lines = wait_for(lambda: (lines := cut_off_lines()) and sum(1 + line.get("suppressed", 0) for line in lines) == 6
                     and lines, timeout=15, every=0.5, what="every cut-off accounted for")  # fmt: skip
    assert any(line.get("suppressed", 0) >= 1 for line in lines), lines
    for line in lines:  # about one connection: its id and peer
        assert isinstance(line["connection"], int) and line["peer"].startswith("127.0.0.1:"), line
        assert line["level"] == "warning"


def test_log_level_changes_in_every_process_while_running(server):
    assert server.status()["supervisor"]["log_level"] == "info"
    assert not [line for line in server.lines() if line["event"] == "connection opened"]  # debug lines
    assert "log level debug (was info)" in server.ctl("log-level", "debug").stdout
    assert server.status()["supervisor"]["log_level"] == "debug"
    wait_for(lambda: len([line for line in server.lines() if line["event"].endswith("log level debug (was info)")])
             == 2, what="both workers follow")  # fmt: skip
    clients = clients_on_every_worker(server, 2)
    def opened() -> list[dict]:
        return [line for line in server.lines() if line["event"] == "connection opened"]

    wait_for(lambda: {line["process"] for line in opened()} >= {"worker 0", "worker 1"}, what="both workers")
    for line in opened():
        assert isinstance(line["connection"], int) and line["peer"].startswith("127.0.0.1:"), line
        assert line["level"] == "debug"
    for client in clients:
        client.close()
    server.ctl("log-level", "info")
    wait_for(lambda: len([line for line in server.lines() if line["event"].endswith("log level info (was debug)")])
             == 2)  # fmt: skip
    count = len(opened())
    Client(server).close()
    assert len(opened()) == count
    bad = server.ctl("log-level", "loud", check=False)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_json_lines_parse_one_by_one_with_the_keys_of_the_contract_and_stdout_stays_empty(server):
    server.ctl("stop")
    server.wait(30)
    lines = server.lines()
    assert len(lines) > 10
    for line in lines:
        assert RFC3339_MS_UTC.fullmatch(line["time"]), line
        assert line["level"] in ("debug", "info", "warning", "error", "critical"), line
        assert line["process"] in ("supervisor", "worker 0", "worker 1"), line
        assert isinstance(line["event"], str) and line["event"], line
    processes = {line["process"] for line in lines}
    assert processes == {"supervisor", "worker 0", "worker 1"}
    assert server.stdout_path.read_bytes() == b""
