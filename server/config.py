"""wsd serve configuration: defaults, a TOML file (`--config`) and command-line flags, in that order.

Every setting has one name; in TOML it is written with underscores (`max_message_size = 65536`),
on the command line with dashes (`--max-message-size 65536`). Flags win over the file.
"""

from __future__ import annotations

import dataclasses
import math
import os
import resource
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

# Descriptors a worker keeps for itself besides client connections: listening sockets, the
# doorbell, shared-memory maps, API connections, log files, the Python runtime's own.
RESERVED_DESCRIPTORS = 100


class ConfigError(ValueError):
    """A setting is invalid: the message says which one, what was wrong and what is allowed."""


@dataclass
class Config:
    host: str = "127.0.0.1"
    port: int = 8080
    api_host: str = "127.0.0.1"
    api_port: int = 8081
    workers: int | str = field(default_factory=lambda: os.cpu_count() or 1)  # an int or "auto"
    max_connections: int | None = None  # for the whole server; None: as many as descriptors allow
    max_message_size: int = 64 * 1024
    max_subscriptions: int = 1000  # per connection
    write_buffer_limit: int = 1024 * 1024  # per connection; a slow reader past it is closed 1013
    admin_socket: str = "./wsd.sock"
    echo_path: str | None = None
    ring_size: int = 64 * 1024 * 1024  # bytes of shared-memory ring per worker (power of two)
    # Channels each worker can sequence (90% of the slots). Subscribing looks the table up, so
    # every worker ends up with pages of every table resident: size it to the load, not larger.
    channel_table_slots: int = 1 << 16
    stop_timeout: float = 10.0  # seconds a graceful stop may take before workers are killed
    drain_window: float = 30.0  # seconds over which a drain (SIGTERM, reload) spreads its closes
    history_size: int = 100  # messages kept per channel for resume
    history_ttl: float = 300.0  # seconds a message stays available for resume
    log_level: str = "info"

    def validate(self) -> None:
        """Raise ConfigError for the first invalid setting."""
        for name in ("port", "api_port"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value <= 65535:
                raise ConfigError(f"{name} must be a TCP port 0-65535, got {value!r}")
        if self.port == self.api_port and self.port != 0 and self.host == self.api_host:
            raise ConfigError(f"port and api_port must differ, both are {self.port}")
        if self.workers != "auto" and (not isinstance(self.workers, int) or self.workers < 1):
            raise ConfigError(f"workers must be a positive integer or 'auto', got {self.workers!r}")
        if self.max_connections is not None and self.max_connections < 1:
            raise ConfigError(f"max_connections must be positive, got {self.max_connections}")
        if self.max_message_size < 128:
            raise ConfigError(f"max_message_size must be at least 128 bytes, got {self.max_message_size}")
        if self.ring_size < 1 << 16 or self.ring_size & (self.ring_size - 1):
            raise ConfigError(f"ring_size must be a power of two >= 65536, got {self.ring_size}")
        if self.max_message_size > self.ring_size // 4 - 1024:
            raise ConfigError(
                f"max_message_size {self.max_message_size} does not fit the bus ring "
                f"(ring_size {self.ring_size}); raise ring_size to at least 4x the message size"
            )
        slots = self.channel_table_slots
        if slots < 1024 or slots & (slots - 1):
            raise ConfigError(f"channel_table_slots must be a power of two >= 1024, got {slots}")
        if self.echo_path is not None and not self.echo_path.startswith("/"):
            raise ConfigError(f"echo_path must start with '/', got {self.echo_path!r}")
        if self.echo_path in ("/ws", "/healthz", "/", "/wsd.js"):
            raise ConfigError(f"echo_path {self.echo_path!r} collides with a built-in path")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"log_level must be debug, info, warning or error, got {self.log_level!r}")
        if self.drain_window < 0:
            raise ConfigError(f"drain_window must be >= 0 seconds, got {self.drain_window}")
        if self.history_size < 0:
            raise ConfigError(f"history_size must be >= 0, got {self.history_size}")
        if self.history_ttl < 0:
            raise ConfigError(f"history_ttl must be >= 0 seconds, got {self.history_ttl}")
        if self.stop_timeout <= 0:
            raise ConfigError(f"stop_timeout must be positive, got {self.stop_timeout}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_toml(path: str) -> dict:
    """Read a TOML config file into a settings dict, rejecting unknown keys with a clear error."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    # Accept a [serve] table as well as top-level keys.
    settings = dict(data.pop("serve", {}))
    settings.update(data)
    known = {f.name for f in dataclasses.fields(Config)}
    normalized = {}
    for key, value in settings.items():
        name = key.replace("-", "_")
        if name not in known:
            raise ConfigError(f"config file {path}: unknown setting {key!r}; known: {', '.join(sorted(known))}")
        normalized[name] = value
    return normalized


def build_config(file_settings: dict, flag_settings: dict) -> Config:
    """Defaults, then the file, then the flags that were given (None means 'not given')."""
    config = Config()
    for source in (file_settings, flag_settings):
        for name, value in source.items():
            if value is not None:
                setattr(config, name, value)
    config.validate()
    return config


def descriptor_limit() -> int:
    """The per-process open-file limit (RLIMIT_NOFILE soft limit, raised to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def connections_per_worker_cap() -> int:
    """Most client connections one worker can hold under the descriptor limit."""
    return max(1, descriptor_limit() - RESERVED_DESCRIPTORS)


def resolve_worker_count(config: Config) -> int:
    """`--workers auto`: enough workers for max_connections, never fewer than the cores."""
    cores = os.cpu_count() or 1
    if config.workers != "auto":
        return int(config.workers)
    if config.max_connections is None:
        return cores
    return max(cores, math.ceil(config.max_connections / connections_per_worker_cap()))


def per_worker_connection_limit(config: Config, workers: int) -> int:
    """A worker stops accepting at this many connections (before it runs out of descriptors)."""
    cap = connections_per_worker_cap()
    if config.max_connections is None:
        return cap
    return min(cap, math.ceil(config.max_connections / workers))


def admin_socket_path(config: Config) -> str:
    return str(Path(config.admin_socket).absolute())
