"""systemd's notify protocol end to end: a real `wsd serve` under a fake notify socket (a real
AF_UNIX datagram socket with the sender's credentials, as systemd checks them) sends READY=1 once
every worker serves, RELOADING=1 and READY=1 around a rolling reload, STOPPING=1 when it drains."""

from __future__ import annotations

import signal

import psutil

from harness.wsd_process import WsdProcess
from tests.fake_notify import FakeNotifySocket
from tests.operations.helpers import scrape


def test_ready_reloading_and_stopping_reach_the_notify_socket_from_the_supervisor(tmp_path, monkeypatch):
    notify = FakeNotifySocket()
    monkeypatch.setenv("NOTIFY_SOCKET", notify.address)
    wsd = WsdProcess(tmp_path, workers=2, flags=["--drain-window", "1"])
    try:
        wsd.start(wait=False)
        [ready] = notify.receive_until("READY", timeout=30)
        assert ready.pid == wsd.proc.pid  # the supervisor (systemd's NotifyAccess=main)
        assert ready.fields == {"READY": "1", "STATUS": "serving: 2 workers"}
        # READY=1 means it: every worker accepts already.
        status = wsd.status()
        assert [(w["state"], w["accepting"]) for w in status["workers"]] == [("running", True)] * 2
        first_pids = {w["pid"] for w in status["workers"]}
        for pid in first_pids:  # the workers never see the notify socket
            assert "NOTIFY_SOCKET" not in psutil.Process(pid).environ()

        wsd.signal(signal.SIGHUP)
        reloading, *rest = notify.receive_until("READY", timeout=60)
        assert reloading.fields["RELOADING"] == "1" and int(reloading.fields["MONOTONIC_USEC"]) > 0
        assert reloading.pid == wsd.proc.pid
        assert rest[-1].fields["READY"] == "1" and "reload 1 done" in rest[-1].fields["STATUS"]
        # Sent once the reload is over: new processes serve every slot, the old ones are gone.
        workers = wsd.status()["workers"]
        assert len(workers) == 2 and not {w["pid"] for w in workers} & first_pids
        assert scrape(wsd).value("wsd_reloads_total") == 1

        wsd.signal(signal.SIGTERM)
        [stopping] = notify.receive_until("STOPPING", timeout=10)
        assert stopping.pid == wsd.proc.pid
        assert stopping.fields["STATUS"].startswith("draining")
        assert int(stopping.fields["EXTEND_TIMEOUT_USEC"]) > 1_000_000
        assert wsd.wait(30) == 0
    finally:
        wsd.kill()
        notify.close()
