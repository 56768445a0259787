"""Settings of `wsd balancer`: command-line flags over an optional TOML file, checked up front so a
mistake is reported before any kernel state is touched."""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from wsd.balancer.maglev import DEFAULT_TABLE_SIZE, is_prime
from wsd.balancer.table import DEFAULT_HASH_SEED

MODES = ("ecmp", "nft", "proxy")


class ConfigError(ValueError):
    """A setting the balancer cannot run with; the message says which and what to do."""


@dataclass(frozen=True, order=True)
class Endpoint:
    """An IPv4 address and TCP port, written "10.0.0.1:8080"."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str, what: str) -> Endpoint:
        host, separator, port = text.rpartition(":")
        try:
            if not separator:
                raise ValueError("missing ':PORT'")
            address = ipaddress.IPv4Address(host)
            port_number = int(port)
            if not 0 < port_number < 65536:
                raise ValueError("port out of range")
        except ValueError as error:
            raise ConfigError(f"{what} {text!r} is not IPv4:PORT ({error}); write e.g. 10.0.0.11:8080") from None
        return cls(str(address), port_number)

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass
class BalancerConfig:
    """Everything `wsd balancer` needs; field names are also the TOML keys (under `[balancer]`)."""

    vip: Endpoint
    backends: list[Endpoint]
    mode: str = "ecmp"
    admin_socket: str = "/run/wsd-balancer.sock"
    table_size: int = DEFAULT_TABLE_SIZE
    hash_seed: int = DEFAULT_HASH_SEED
    health_path: str = "/healthz"
    health_interval_s: float = 1.0
    health_timeout_s: float = 0.5
    fail_after: int = 2  # K: failed checks in a row before a backend leaves the table
    rise_after: int = 1  # passed checks in a row before it comes back
    drain_window_s: float = 60.0  # ecmp: longest a draining backend keeps its buckets
    ecmp_buckets: int = 128  # fixed at group creation: the kernel cannot resize a resilient group
    ecmp_idle_timer_s: int = 120  # keep the WebSocket ping interval below this
    nexthop_id_base: int = 7700  # group id; backend nexthops are base+1, base+2, ...
    nft_table: str = "wsd_balancer"
    route_key: str | None = None  # proxy mode, L7: hash this query parameter of the handshake path
    log_changes_to: str | None = None
    extra: dict = field(default_factory=dict, repr=False)

    def check(self) -> BalancerConfig:
        if self.mode not in MODES:
            raise ConfigError(f"mode {self.mode!r} is not one of {', '.join(MODES)}")
        if not self.backends:
            raise ConfigError("no backends: pass --backend HOST:PORT (once per backend) or list them in TOML")
        if len(set(self.backends)) != len(self.backends):
            raise ConfigError("a backend is listed twice; list each HOST:PORT once")
        if not is_prime(self.table_size):
            raise ConfigError(f"table_size {self.table_size} is not prime; use e.g. 4099 or 65537")
        if self.table_size < 10 * len(self.backends):
            raise ConfigError(f"table_size {self.table_size} is too small for {len(self.backends)} backends")
        if self.mode == "ecmp":
            mismatched = [str(backend) for backend in self.backends if backend.port != self.vip.port]
            if mismatched:
                raise ConfigError(
                    f"ecmp mode routes packets unchanged, so backends must listen on the VIP port "
                    f"{self.vip.port}: {', '.join(mismatched)} do not (use --mode nft to translate ports)"
                )
            if not 2 <= self.ecmp_buckets <= 65535:
                raise ConfigError("ecmp_buckets must be between 2 and 65535")
        if self.health_interval_s <= 0 or self.health_timeout_s <= 0:
            raise ConfigError("health_interval_s and health_timeout_s must be positive")
        if self.fail_after < 1 or self.rise_after < 1:
            raise ConfigError("fail_after and rise_after must be at least 1")
        if self.route_key and self.mode != "proxy":
            raise ConfigError("route_key (L7 routing by a handshake query parameter) needs --mode proxy")
        return self


def load_toml(path: str) -> dict:
    """The `[balancer]` table of a TOML file (or its top level when there is no such table)."""
    try:
        document = tomllib.loads(Path(path).read_text())
    except OSError as error:
        raise ConfigError(f"cannot read config {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config {path} is not valid TOML: {error}") from None
    return document.get("balancer", document)


def build_config(file_settings: dict, flag_settings: dict) -> BalancerConfig:
    """Merge TOML settings with flags (flags win; None means "not given") and check the result."""
    known = {item.name for item in fields(BalancerConfig)} - {"extra"}
    unknown = sorted(set(file_settings) - known)
    if unknown:
        raise ConfigError(f"unknown setting(s) in config: {', '.join(unknown)}")
    merged = dict(file_settings)
    merged.update({key: value for key, value in flag_settings.items() if value is not None})
    if "vip" not in merged:
        raise ConfigError("no VIP: pass --vip IP:PORT or set vip in the config")
    merged["vip"] = Endpoint.parse(str(merged["vip"]), "VIP")
    merged["backends"] = [Endpoint.parse(str(text), "backend") for text in merged.get("backends", [])]
    return BalancerConfig(**merged).check()
