"""Hosts on one box for the cross-host tests and benchmarks: network namespaces on one switch, each
host a separate address running its own `wsd serve` (or a peer), a namespace for Redis, and a client
namespace with many source addresses.

    client 10.79.1.1-32 --+
    redis  10.79.0.2    --+-- bridge (switch namespace)
    h1..hN 10.79.0.11.. --+

Names carry a per-run suffix so a leftover from a crashed run never collides; `destroy()` removes
everything it created. Needs root (ip netns).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

SUBNET = "10.79"
REDIS_IP = f"{SUBNET}.0.2"
CLIENT_IPS = [f"{SUBNET}.1.{index}" for index in range(1, 33)]
WS_PORT = 8080
API_PORT = 8081
# The API listens beyond loopback in the lab, which wsd allows only with a key (protected mode).
API_KEY = "lab-api-key-0123456789"
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def host_ip(index: int) -> str:
    return f"{SUBNET}.0.{11 + index}"


def sh(*command: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {result.stderr.strip()}")
    return result


def missing() -> str | None:
    """Why the namespace lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if shutil.which("ip") is None:
        return "needs iproute2 (`ip`)"
    return None


@contextlib.contextmanager
def in_netns(name: str):
    """Run the block with this thread in namespace `name` (sockets made there stay there)."""
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {name}")
        yield
    finally:
        _libc.setns(original, CLONE_NEWNET)
        os.close(original)
        os.close(target)


def enter_netns(name: str) -> None:
    """Move this whole (single-threaded, fresh) process into namespace `name` for good."""
    target = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {name}")
    finally:
        os.close(target)


class Lab:
    def __init__(self, hosts: int = 3, prefix: str = "wsdc") -> None:
        suffix = f"{os.getpid() % 10000}{secrets.token_hex(2)}"
        self.switch = f"{prefix}sw{suffix}"
        self.client = f"{prefix}cl{suffix}"
        self.redis = f"{prefix}rd{suffix}"
        self.hosts = [f"{prefix}h{index}{suffix}" for index in range(hosts)]
        self.namespaces = [self.switch, self.client, self.redis, *self.hosts]
        self.workdir = Path(f"/tmp/{self.switch}")
        self.processes: list[subprocess.Popen] = []
        self._source = 0

    # -- the network --

    def ns(self, namespace: str, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", namespace, *command, check=check)

    def create(self) -> Lab:
        self.workdir.mkdir(exist_ok=True)
        try:
            for namespace in self.namespaces:
                sh("ip", "netns", "add", namespace)
                self.ns(namespace, "ip", "link", "set", "lo", "up")
            self.ns(self.switch, "ip", "link", "add", "br0", "type", "bridge")
            self.ns(self.switch, "ip", "link", "set", "br0", "up")
            members = [(self.client, CLIENT_IPS), (self.redis, [REDIS_IP])]
            members += [(namespace, [host_ip(index)]) for index, namespace in enumerate(self.hosts)]
            for index, (namespace, addresses) in enumerate(members):
                port = f"port{index}"
                sh("ip", "-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "lan", "netns",
                   namespace)  # fmt: skip
                self.ns(self.switch, "ip", "link", "set", port, "master", "br0", "up")
                self.ns(namespace, "ip", "link", "set", "lan", "up")
                for address in addresses:
                    self.ns(namespace, "ip", "addr", "add", f"{address}/16", "dev", "lan")
            self.ns(self.client, "sysctl", "-qw", "net.ipv4.ip_local_port_range=15000 64999")
            for namespace in self.hosts:
                self.ns(namespace, "sysctl", "-qw", "net.core.somaxconn=4096")
        except BaseException:
            self.destroy()
            raise
        return self

    def client_socket(self) -> socket.socket:
        """A non-blocking TCP socket in the client namespace, on the next of its source addresses."""
        with in_netns(self.client):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_IP, 24, 1)  # IP_BIND_ADDRESS_NO_PORT: the port is picked at connect()
        sock.bind((CLIENT_IPS[self._source % len(CLIENT_IPS)], 0))
        self._source += 1
        sock.setblocking(False)
        return sock

    # -- processes --

    def spawn(self, namespace: str, command: list[str], log_name: str, env: dict | None = None) -> subprocess.Popen:
        log = open(self.workdir / f"{log_name}.log", "ab")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(["ip", "netns", "exec", namespace, *command], stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True, env=env)  # fmt: skip
        self.processes.append(process)
        return process

    def log_text(self, log_name: str) -> str:
        path = self.workdir / f"{log_name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def destroy(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGINT)
        deadline = time.monotonic() + 15
        for process in self.processes:
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for namespace in self.namespaces:
            sh("ip", "netns", "del", namespace, check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)


class NetnsRedis:
    """One redis-server in the lab's Redis namespace (optionally AOF, or one node of a cluster)."""

    def __init__(self, lab: Lab, port: int = 6379, aof: bool = False, extra: list[str] | None = None,
                 name: str = "redis"):  # fmt: skip
        self.lab, self.port, self.aof, self.extra, self.name = lab, port, aof, extra or [], name
        self.dir = lab.workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://{REDIS_IP}:{self.port}"

    def start(self) -> None:
        command = [shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind", REDIS_IP,
                   "--dir", str(self.dir), "--save", "", "--appendonly", "yes" if self.aof else "no",
                   "--appendfsync", "always", "--protected-mode", "no", *self.extra]  # fmt: skip
        self.process = self.lab.spawn(self.lab.redis, command, self.name)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.cli("PING", check=False).strip() == "PONG":
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.lab.log_text(self.name)[-2000:]}")
            time.sleep(0.05)
        raise RuntimeError(f"redis-server {self.name} did not answer PING")

    def cli(self, *args: str, check: bool = True) -> str:
        return self.lab.ns(self.lab.redis, shutil.which("redis-cli") or "redis-cli", "-h", REDIS_IP, "-p",
                           str(self.port), *map(str, args), check=check).stdout  # fmt: skip

    def numsub(self, channel: str, sharded: bool = False) -> int:
        output = self.cli("PUBSUB", "SHARDNUMSUB" if sharded else "NUMSUB", f"wsd:{{{channel}}}").split()
        return int(output[1])

    def commandstats(self) -> dict[str, dict[str, float]]:
        stats = {}
        for line in self.cli("INFO", "commandstats").splitlines():
            if line.startswith("cmdstat_"):
                name, _, values = line.partition(":")
                stats[name.removeprefix("cmdstat_")] = {k: float(v) for k, v in
                                                        (item.split("=") for item in values.split(","))}  # fmt: skip
        return stats

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def wipe(self) -> None:
        for path in self.dir.iterdir():
            shutil.rmtree(path) if path.is_dir() else path.unlink()


class NetnsRedisCluster:
    """Three masters in the Redis namespace, joined by `redis-cli --cluster create`."""

    def __init__(self, lab: Lab, ports: tuple[int, ...] = (7001, 7002, 7003)):
        self.nodes = [NetnsRedis(lab, port, name=f"node{port}",
                                 extra=["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                                        "--cluster-node-timeout", "2000"]) for port in ports]  # fmt: skip
        self.lab = lab

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"{REDIS_IP}:{node.port}" for node in self.nodes)

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        self.lab.ns(self.lab.redis, shutil.which("redis-cli") or "redis-cli", "--cluster", "create",
                    *(f"{REDIS_IP}:{node.port}" for node in self.nodes), "--cluster-replicas", "0", "--cluster-yes")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if all("cluster_state:ok" in node.cli("CLUSTER", "INFO") for node in self.nodes):
                return
            time.sleep(0.1)
        raise RuntimeError("the Redis Cluster did not become ok")

    def node_of(self, channel: str) -> NetnsRedis:
        slot = int(self.nodes[0].cli("CLUSTER", "KEYSLOT", f"wsd:{{{channel}}}").strip())
        for line in self.nodes[0].cli("CLUSTER", "NODES").splitlines():
            fields = line.split()
            port = int(fields[1].split(":")[1].split("@")[0])
            for part in fields[8:]:
                low, _, high = part.partition("-")
                if low.isdigit() and int(low) <= slot <= int(high or low):
                    return next(node for node in self.nodes if node.port == port)
        raise LookupError(channel)

    def numsub(self, channel: str) -> int:
        return self.node_of(channel).numsub(channel, sharded=True)

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()


class NetnsWsd:
    """`wsd serve` on one lab host: WebSocket and API on the host's address, admin socket in the lab."""

    def __init__(self, lab: Lab, index: int, flags: list[str], workers: int = 2):
        self.lab, self.index, self.flags, self.workers = lab, index, flags, workers
        self.ip = host_ip(index)
        self.admin_socket = str(lab.workdir / f"h{index}.sock")
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"ws://{self.ip}:{WS_PORT}/ws"

    @property
    def log_name(self) -> str:
        return f"wsd-h{self.index}"

    def start(self, wait: bool = True) -> None:
        wsd = str(Path(sys.executable).with_name("wsd"))
        command = [wsd, "serve", "--host", "0.0.0.0", "--port", str(WS_PORT), "--api-host", "0.0.0.0", "--api-port",
                   str(API_PORT), "--api-key", API_KEY, "--admin-socket", self.admin_socket, "--workers",
                   str(self.workers), *self.flags]
        self.process = self.lab.spawn(self.lab.hosts[self.index], command, self.log_name)  # fmt: skip
        if wait:
            self.wait_ready()

    def ctl(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        wsd = str(Path(sys.executable).with_name("wsd"))
        result = subprocess.run([wsd, "ctl", "--admin-socket", self.admin_socket, *args], capture_output=True,
                                text=True, timeout=timeout)  # fmt: skip
        if check and result.returncode != 0:
            raise RuntimeError(f"wsd ctl {' '.join(args)} on h{self.index} failed: {result.stderr}")
        return result

    def status(self) -> dict:
        return json.loads(self.ctl("--json", "status", timeout=10).stdout)

    def wait_ready(self, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"wsd on h{self.index} exited: {self.lab.log_text(self.log_name)[-3000:]}")
            try:
                last = self.status()
                if all(w["pid"] and w["state"] == "running" and w["accepting"] for w in last["workers"]):
                    if last.get("cluster", {}).get("state", "up") == "up":
                        return last
            except (OSError, RuntimeError, ValueError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"wsd on h{self.index} not ready; last status {last}\n"
                           f"{self.lab.log_text(self.log_name)[-3000:]}")  # fmt: skip

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


class ApiClient:
    """The publish API of one lab host over one kept-alive connection from the client namespace."""

    def __init__(self, lab: Lab, ip: str, port: int = API_PORT, api_key: str | None = API_KEY):
        self.lab, self.ip, self.port = lab, ip, port
        self.authorization = f"Authorization: Bearer {api_key}\r\n" if api_key else ""
        self.reader = self.writer = None

    async def _connect(self) -> None:
        import asyncio

        sock = self.lab.client_socket()
        await asyncio.get_running_loop().sock_connect(sock, (self.ip, self.port))
        self.reader, self.writer = await asyncio.open_connection(sock=sock)

    async def post(self, path: str, body: object, timeout: float = 10.0) -> tuple[int, dict]:
        """(status, JSON body); reconnects once if the kept connection was closed."""
        return await self.request("POST", path, json.dumps(body).encode(), timeout)

    async def get(self, path: str, timeout: float = 10.0) -> tuple[int, dict]:
        return await self.request("GET", path, None, timeout)

    async def request(self, method: str, path: str, payload: bytes | None, timeout: float = 10.0) -> tuple[int, dict]:
        import asyncio

        content = "" if payload is None else f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        request = (f"{method} {path} HTTP/1.1\r\nHost: {self.ip}\r\n{content}{self.authorization}\r\n").encode()
        request += payload or b""
        for attempt in range(2):
            try:
                if self.writer is None:
                    await self._connect()
                self.writer.write(request)
                async with asyncio.timeout(timeout):
                    head = await self.reader.readuntil(b"\r\n\r\n")
                    status = int(head.split(b" ", 2)[1])
                    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length:"))  # fmt: skip
                    data = await self.reader.readexactly(length)
                if b"connection: close" in head.lower():
                    self.close()
                return status, json.loads(data)
            except (OSError, asyncio.IncompleteReadError, ConnectionError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def publish(self, channel: str, data: object) -> tuple[int, dict]:
        return await self.post("/api/publish", {"channel": channel, "data": data})

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None
