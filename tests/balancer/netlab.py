"""A throw-away network of namespaces for the balancer tests: a switch, a client host with many
source addresses, the front host and three backend hosts, all on one L2 segment.

    client 10.77.1.1-64 --+
    front  10.77.0.1    --+-- bridge (switch namespace)
    b1..b3 10.77.0.11-13 --+
    VIP    10.99.0.1:8080: routed by the client to the front; held by the backends (ecmp, DSR) or the
                          front (proxy); DNATed by the front (nft)

Names carry a per-run suffix so a leftover from a crashed run never collides; `Lab.destroy()`
removes everything it created.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

VIP = "10.99.0.1"
PORT = 8080
FRONT_IP = "10.77.0.1"
BACKEND_IPS = ["10.77.0.11", "10.77.0.12", "10.77.0.13"]
CLIENT_IPS = [f"10.77.1.{index}" for index in range(1, 65)]
REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def sh(*command: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {result.stderr.strip()}")
    return result


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


def client_socket(namespace: str, source_ip: str) -> socket.socket:
    """A non-blocking TCP socket in the client namespace, bound to one of its source addresses."""
    with in_netns(namespace):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source_ip, 0))
    sock.setblocking(False)
    return sock


def wsd_serve_available() -> bool:
    wsd = shutil.which("wsd") or str(Path(PYTHON).with_name("wsd"))
    if not Path(wsd).exists():
        return False
    return subprocess.run([wsd, "serve", "--help"], capture_output=True, timeout=20).returncode == 0


class Lab:
    """The namespaces, links and addresses; backends and the balancer are started by the tests."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        suffix = f"{os.getpid() % 10000}{secrets.token_hex(2)}"
        self.switch = f"wsdsw{suffix}"
        self.client = f"wsdcl{suffix}"
        self.front = f"wsdfr{suffix}"
        self.backends = [f"wsdb{index}{suffix}" for index in range(1, 4)]
        self.namespaces = [self.switch, self.client, self.front, *self.backends]
        self.processes: list[subprocess.Popen] = []
        self.workdir = Path(f"/tmp/{self.front}")

    def ns(self, namespace: str, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", namespace, *command, check=check)

    def sysctl(self, namespace: str, **settings: str) -> None:
        for key, value in settings.items():
            self.ns(namespace, "sysctl", "-qw", f"{key.replace('__', '.')}={value}")

    def create(self) -> None:
        self.workdir.mkdir(exist_ok=True)
        for namespace in self.namespaces:
            sh("ip", "netns", "add", namespace)
            self.ns(namespace, "ip", "link", "set", "lo", "up")
        self.ns(self.switch, "ip", "link", "add", "br0", "type", "bridge")
        self.ns(self.switch, "ip", "link", "set", "br0", "up")
        hosts = [(self.client, CLIENT_IPS), (self.front, [FRONT_IP])] + [
            (namespace, [address]) for namespace, address in zip(self.backends, BACKEND_IPS, strict=True)
        ]
        for index, (namespace, addresses) in enumerate(hosts):
            port = f"port{index}"
            sh("ip", "-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "lan", "netns", namespace)
            self.ns(self.switch, "ip", "link", "set", port, "master", "br0", "up")
            self.ns(namespace, "ip", "link", "set", "lan", "up")
            for address in addresses:
                self.ns(namespace, "ip", "addr", "add", f"{address}/16", "dev", "lan")
            self.sysctl(namespace, net__ipv4__conf__all__rp_filter="0", net__ipv4__conf__lan__rp_filter="0",
                        net__ipv4__conf__all__accept_redirects="0", net__ipv4__conf__lan__accept_redirects="0")
        self.ns(self.client, "ip", "route", "add", f"{VIP}/32", "via", FRONT_IP)
        self.sysctl(self.client, net__ipv4__ip_local_port_range="20000 60999")
        # The front forwards out of the interface the packet came in on: no redirects, or the
        # client would learn to bypass it.
        self.sysctl(self.front, net__ipv4__ip_forward="1", net__ipv4__conf__all__send_redirects="0",
                    net__ipv4__conf__lan__send_redirects="0", net__ipv4__fib_multipath_hash_policy="3",
                    net__ipv4__fib_multipath_hash_fields="0x0037")
        for namespace in self.backends:
            if self.mode == "ecmp":
                # DSR: the backend holds the VIP but must not answer ARP for it on the segment.
                self.ns(namespace, "ip", "addr", "add", f"{VIP}/32", "dev", "lo")
                self.sysctl(namespace, net__ipv4__conf__all__arp_ignore="1", net__ipv4__conf__all__arp_announce="2",
                            net__ipv4__conf__lan__arp_ignore="1", net__ipv4__conf__lan__arp_announce="2")
            elif self.mode == "nft":
                # DNAT keeps state on the front: replies must go back through it to be un-NATed.
                self.ns(namespace, "ip", "route", "add", "10.77.1.0/24", "via", FRONT_IP)
        if self.mode == "proxy":
            self.ns(self.front, "ip", "addr", "add", f"{VIP}/32", "dev", "lo")

    def spawn(self, namespace: str, *command: str, log_name: str) -> subprocess.Popen:
        log = open(self.workdir / f"{log_name}.log", "wb")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(["ip", "netns", "exec", namespace, *command], stdout=log, stderr=subprocess.STDOUT,
                                   cwd=REPO, start_new_session=True)
        self.processes.append(process)
        return process

    def log_text(self, log_name: str) -> str:
        path = self.workdir / f"{log_name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def established_peers(self, namespace: str, port: int = PORT) -> set[tuple[str, int]]:
        """Peers of established TCP connections to `port` in `namespace` (via ss, as a fact check)."""
        output = self.ns(namespace, "ss", "-Htn", "state", "established", f"( sport = :{port} )").stdout
        peers = set()
        for line in output.splitlines():
            fields = line.split()
            host, _, peer_port = fields[-1].rpartition(":")
            peers.add((host, int(peer_port)))
        return peers

    def destroy(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, 15)
        deadline = time.monotonic() + 5
        for process in self.processes:
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, 9)
                process.wait()
        for namespace in self.namespaces:
            sh("ip", "netns", "del", namespace, check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)
