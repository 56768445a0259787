"""Run `wsd serve` as a subprocess on free ports and talk to it the way users and scripts do:
`wsd ctl`, `ctl --json status`, the publish API, `/healthz`, the log."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

from harness.net import free_port

WSD = [sys.executable, "-m", "wsd.server"]


class WsdProcess:
    def __init__(self, workdir: Path, workers: int = 2, flags: list[str] | None = None):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.workers = workers
        self.port = free_port()
        self.api_port = free_port()
        self.admin_socket = str(workdir / "wsd.sock")
        self.flags = flags or []
        self.log_path = workdir / "wsd.log"
        self.proc: subprocess.Popen | None = None
        # With --tls-cert / --api-tls-cert: contexts that trust the server's certificates (the
        # WebSocket port then speaks wss:// and https://, the API https://). With --api-key: the key.
        self.ws_ssl: ssl.SSLContext | None = None
        self.api_ssl: ssl.SSLContext | None = None
        self.api_key: str | None = None

    @property
    def url(self) -> str:
        return f"{'wss' if self.ws_ssl else 'ws'}://127.0.0.1:{self.port}/ws"

    @property
    def api_url(self) -> str:
        return f"{'https' if self.api_ssl else 'http'}://127.0.0.1:{self.api_port}"

    def command(self) -> list[str]:
        return WSD + [
            "serve", "--port", str(self.port), "--api-port", str(self.api_port),
            "--admin-socket", self.admin_socket, "--workers", str(self.workers), *self.flags,
        ]  # fmt: skip

    def start(self, wait: bool = True) -> None:
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), stdout=self.log, stderr=subprocess.STDOUT, cwd=self.workdir)
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 20.0) -> dict:
        """Until every worker is up and serving (its stats show its own pid)."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"wsd exited with {self.proc.returncode}:\n{self.read_log()}")
            try:
                status = self.status()
                last = status
                if all(w["pid"] and w["state"] == "running" and w["accepting"] for w in status["workers"]):
                    if self.http_get("/healthz")[0] == 200:
                        return status
            except (OSError, RuntimeError, ValueError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"wsd not ready after {timeout}s; last status {last}\n{self.read_log()}")

    def ctl(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        result = subprocess.run(
            WSD + ["ctl", "--admin-socket", self.admin_socket, *args],
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise RuntimeError(f"wsd ctl {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result

    def status(self) -> dict:
        return json.loads(self.ctl("--json", "status", timeout=10).stdout)

    def http_get(self, path: str) -> tuple[int, bytes]:
        scheme = "https" if self.ws_ssl else "http"
        try:
            with urllib.request.urlopen(f"{scheme}://127.0.0.1:{self.port}{path}", timeout=5,
                                        context=self.ws_ssl) as response:  # fmt: skip
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def publish(self, channel: str, data: object) -> int:
        headers = {"Content-Type": "application/json"}
        if self.api_key is not None:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(
            f"{self.api_url}/api/publish", data=json.dumps({"channel": channel, "data": data}).encode(), headers=headers
        )
        with urllib.request.urlopen(request, timeout=10, context=self.api_ssl) as response:
            return json.loads(response.read())["offset"]

    def worker_pids(self) -> list[int]:
        return [w["pid"] for w in self.status()["workers"]]

    def processes(self) -> dict[str, psutil.Process]:
        """The supervisor and each worker, named by role and pid (`supervisor:123`, `worker:124`)."""
        supervisor = psutil.Process(self.proc.pid)
        found = {f"supervisor:{supervisor.pid}": supervisor}
        for pid in self.worker_pids():
            found[f"worker:{pid}"] = psutil.Process(pid)
        return found

    def read_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except FileNotFoundError:
            return ""

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                # A stuck stop: kill the whole tree so no worker outlives the test.
                for child in _children(self.proc.pid):
                    os.kill(child, signal.SIGKILL)
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()


def _children(pid: int) -> list[int]:
    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []
