"""Real redis-server processes for the cluster tests: one instance, or a 3-master Redis Cluster, each
on free ports in its own temporary directory; killed, restarted, paused like a failing server."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import redis

from harness.net import free_port

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
MISSING = (
    None
    if REDIS_SERVER and REDIS_CLI
    else "redis-server/redis-cli not installed: run `make system-deps` as root (Debian packages redis-server, "
    "redis-tools in system-packages.txt)"
)


class RedisServer:
    """One redis-server on 127.0.0.1:<free port>, data in `workdir` (AOF optional)."""

    def __init__(self, workdir: Path, *, aof: bool = False, extra: list[str] | None = None, port: int | None = None):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.aof = aof
        self.extra = extra or []
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
            "--save", "", "--appendonly", "yes" if self.aof else "no", "--appendfsync", "always",
            "--logfile", str(self.workdir / "redis.log"), "--daemonize", "no", *self.extra,
        ]  # fmt: skip

    def start(self) -> None:
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    return
            except redis.exceptions.RedisError as exc:
                if self.proc.poll() is not None:
                    log = (self.workdir / "redis.log").read_text()[-2000:]
                    raise RuntimeError(f"redis-server exited: {log}") from exc
                time.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} did not answer PING within 10 s")

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5, protocol=2)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no save (what is in the AOF with fsync always survives)."""
        if self.proc is not None and self.proc.poll() is None:
            if self.stopped:
                os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()
        self.stopped = False

    def wipe(self) -> None:
        """Remove the data directory's contents: the next start is an empty Redis."""
        for path in self.workdir.iterdir():
            if path.name != "redis.log":
                shutil.rmtree(path) if path.is_dir() else path.unlink()

    stopped = False

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.stopped = True

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)
        self.stopped = False

    def commandstats(self) -> dict[str, int]:
        """calls per command name (lower case) since the last CONFIG RESETSTAT."""
        return {name.removeprefix("cmdstat_"): stats["calls"] for name, stats in
                self.client().info("commandstats").items()}  # fmt: skip


class RedisCluster:
    """Three masters with --cluster-enabled, joined by `redis-cli --cluster create`."""

    def __init__(self, workdir: Path, masters: int = 3):
        self.nodes = [
            RedisServer(
                workdir / f"node{i}",
                extra=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                    # Given, because the default (port + 10000) does not exist for ports above 55535.
                    "--cluster-port",
                    str(free_port()),
                ],
            )  # fmt: skip
            for i in range(masters)
        ]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run([REDIS_CLI, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, capture_output=True, timeout=30)  # fmt: skip
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            states = [node.client().cluster("info")["cluster_state"] for node in self.nodes]
            if all(state == "ok" for state in states):
                return
            time.sleep(0.05)
        raise RuntimeError(f"the Redis Cluster did not become ok: {states}")

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()

    def node_of_slot(self, slot: int) -> RedisServer:
        for entry in self.nodes[0].client().execute_command("CLUSTER", "SLOTS"):
            if entry[0] <= slot <= entry[1]:
                port = int(entry[2][1])
                return next(node for node in self.nodes if node.port == port)
        raise LookupError(slot)
