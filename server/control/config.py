"""wsd serve configuration: defaults, a TOML file (`--config`) and command-line flags, in that order.

Every setting is declared once, in `Config`: its default, its type, its help text. The TOML keys
(`max_message_size = 65536`, top level or under `[serve]`), the flags (`--max-message-size 65536`)
and `wsd serve --help` all derive from that declaration. Flags win over the file.
"""

from __future__ import annotations

import dataclasses
import math
import os
import resource
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wsd.server.auth.keys import AuthSettings

# Descriptors a worker keeps for itself besides client connections: listening sockets, the
# doorbell, shared-memory maps, API connections, log files, the Python runtime's own.
RESERVED_DESCRIPTORS = 100


class ConfigError(ValueError):
    """A setting is invalid: the message says which one, what was wrong and what is allowed."""


def _patterns(value: Any) -> tuple[str, ...]:
    """A channel-pattern list: a comma list (a flag) or a list of strings (TOML)."""
    from wsd.server.auth.permissions import PatternError, parse_pattern_list, pattern_error

    if isinstance(value, str):
        try:
            return parse_pattern_list(value)
        except PatternError as exc:
            raise ValueError(str(exc)) from None
    if not isinstance(value, (list, tuple)):
        raise ValueError(f'must be a list of channel patterns (e.g. "news,room:*"), got {value!r}')
    for item in value:
        problem = pattern_error(item)
        if problem is not None:
            raise ValueError(problem)
    return tuple(value)


def _origins(value: Any) -> tuple[str, ...]:
    """An origin list: a comma list (a flag) or a list of strings (TOML); checked in validate()."""
    from wsd.server.auth.origin import parse_origin_list

    if isinstance(value, str):
        return parse_origin_list(value)
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
        raise ValueError(f'must be a list of origins (e.g. "https://app.example.com"), got {value!r}')
    return tuple(value)


def _workers(value: Any) -> int | str:
    if value == "auto":
        return value
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise ValueError(f"must be a positive integer or 'auto', got {value!r}") from None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"must be a positive integer or 'auto', got {value!r}")
    return value


@dataclass(frozen=True)
class Setting:
    """How one Config field is given: its type, its help, how a flag's text becomes a value."""

    kind: type  # int, float, str or bool; a value of another type is an error
    help: str
    optional: bool = False  # None (the default) means "not set"
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    parse: Callable[[Any], Any] | None = None  # replaces the kind check (e.g. workers: int or "auto")
    default_text: str | None = None  # shown in --help when the default is computed


def setting(default: Any, kind: type, help: str, **options: Any) -> Any:
    """A Config field with its Setting in the field's metadata."""
    meta = {"setting": Setting(kind, help, **options)}
    if callable(default):
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Config:
    host: str = setting("127.0.0.1", str, "address for WebSocket clients")
    port: int = setting(8080, int, "port for WebSocket clients (also /healthz and the demo page)")
    api_host: str = setting("127.0.0.1", str, "address of the publish API")
    api_port: int = setting(8081, int, "port of the publish API")
    api_idle_timeout: float = setting(60.0, float, "seconds a kept-alive publish API connection may stay idle")
    api_max_connections: int = setting(
        1000, int, "publish API connections the whole server holds at once (more: 503); they count against descriptors"
    )
    workers: int | str = setting(
        lambda: os.cpu_count() or 1, int, "worker processes, or 'auto': enough for --max-connections",
        parse=_workers, default_text="number of cores",
    )  # fmt: skip
    max_connections: int | None = setting(
        None, int, "connections the whole server holds (each worker stops accepting at its share)",
        optional=True, default_text="as descriptors allow",
    )  # fmt: skip
    max_connections_per_ip: int | None = setting(
        None, int, "connections one client address may hold on the whole server (more: HTTP 503)", optional=True,
        default_text="off",
    )  # fmt: skip
    max_message_size: int = setting(64 * 1024, int, "largest client message in bytes; larger: close 1009")
    max_subscriptions: int = setting(1000, int, "channels one connection may subscribe to")
    max_worker_subscriptions: int | None = setting(
        None, int, "subscriptions one worker holds in all; more: err too_many_subscriptions", optional=True,
    )  # fmt: skip
    write_buffer_limit: int = setting(
        1024 * 1024, int, "unsent bytes per client; over it for --slow-reader-timeout (or over 8x at once): close 1013"
    )
    slow_reader_timeout: float = setting(5.0, float, "seconds a client may stay over --write-buffer-limit")
    ping_interval: float = setting(25.0, float, "seconds between keepalive pings to each client")
    ping_timeout: float = setting(10.0, float, "seconds a client has to answer a ping (else close 1011)")
    admin_socket: str = setting("./wsd.sock", str, "admin Unix socket of `wsd ctl` (mode 0600)", metavar="PATH")
    echo_path: str | None = setting(
        None, str, "also serve a WebSocket echo endpoint at PATH (for Autobahn)", optional=True, metavar="PATH"
    )
    compression: str = setting(
        "on", str, "permessage-deflate for clients that offer it: on or off", choices=("on", "off"), metavar="on|off"
    )
    compression_threshold: int = setting(
        256, int, "messages smaller than this many bytes are sent uncompressed, even where negotiated", metavar="BYTES"
    )
    ring_size: int = setting(64 * 1024 * 1024, int, "bytes of shared-memory bus ring per worker (power of two)")
    # Subscribing looks the table up, so every worker ends up with pages of every table resident:
    # size it to the load, not larger.
    channel_table_slots: int = setting(
        1 << 16, int, "channels whose state each worker keeps (power of two; when 90%% are used, the least recently "
        "used without subscribers are forgotten)"
    )
    stop_timeout: float = setting(10.0, float, "seconds a graceful stop (SIGINT, ctl stop) may take")
    drain_window: float = setting(30.0, float, "seconds over which SIGTERM and reloads spread client closes")
    lame_duck: float = setting(
        5.0, float, "seconds a draining server still accepts handshakes (its /healthz says 503 at once)"
    )
    worker_timeout: float = setting(
        30.0, float, "seconds without a heartbeat after which a hung worker is killed and respawned"
    )
    history_size: int = setting(100, int, "messages kept per channel for resume")
    history_ttl: float = setting(300.0, float, "seconds a message stays available for resume")
    log_level: str = setting(
        "info", str, "log level (`wsd ctl log-level` changes it while running)",
        choices=("debug", "info", "warning", "error"),
    )  # fmt: skip
    log_format: str = setting(
        "text", str, "log lines on stderr: text, or json (one object per line)", choices=("text", "json")
    )
    # TOML: [cluster] redis = [...], timeout = 2.0 (or cluster = [...], cluster_timeout at the top level).
    cluster: list[str] = setting(
        list, list, "Redis shared by every host: redis://[user:password@]host:port[/db], rediss://... (TLS); "
        "repeat for independent instances (channels spread by a consistent hash), or one "
        "redis+cluster://host:port[,host:port...] for a Redis Cluster", metavar="URL", default_text="off: one host",
    )  # fmt: skip
    cluster_timeout: float = setting(2.0, float, "seconds Redis has to answer before a publish or sub fails")
    # -- who may connect, subscribe and publish (docs/auth.md) --
    auth_secret: str | None = setting(
        None, str, "HS256 secret of connection tokens (shows in ps: prefer --auth-secret-file)", optional=True,
        metavar="SECRET",
    )  # fmt: skip
    auth_secret_file: str | None = setting(
        None, str, "file holding the HS256 secret of connection tokens (a trailing newline is stripped)",
        optional=True, metavar="FILE",
    )  # fmt: skip
    auth_public_key: str | None = setting(
        None, str, "PEM public key or certificate verifying RS256/ES256 connection tokens", optional=True,
        metavar="FILE",
    )  # fmt: skip
    auth_audience: str | None = setting(None, str, "tokens must carry this aud", optional=True, metavar="AUD")
    auth_issuer: str | None = setting(None, str, "tokens must carry this iss", optional=True, metavar="ISS")
    public_channels: tuple[str, ...] = setting(
        (), list, "channel patterns anyone authenticated may subscribe to (comma list; TOML: a list)",
        parse=_patterns, metavar="PATTERNS", default_text="none",
    )  # fmt: skip
    auth_timeout: float = setting(5.0, float, "seconds a connection without ?token= has to send its auth message")
    client_rate: float = setting(100.0, float, "requests per second per connection (burst 2x; 0: no limit)")
    allowed_origins: tuple[str, ...] | None = setting(
        None, list, "Origins allowed to open /ws (comma list; TOML: a list)", optional=True, parse=_origins,
        metavar="LIST", default_text="any",
    )  # fmt: skip
    api_key: str | None = setting(
        None, str, "the publish API needs Authorization: Bearer KEY (shows in ps: prefer --api-key-file)",
        optional=True, metavar="KEY",
    )  # fmt: skip
    api_key_file: str | None = setting(
        None, str, "file holding the publish API key (a trailing newline is stripped)", optional=True, metavar="FILE"
    )
    tls_cert: str | None = setting(
        None, str, "PEM certificate chain: wss:// and https:// on the WebSocket port", optional=True, metavar="FILE"
    )
    tls_key: str | None = setting(None, str, "PEM private key of --tls-cert", optional=True, metavar="FILE")
    api_tls_cert: str | None = setting(
        None, str, "PEM certificate chain: https:// on the API port", optional=True, metavar="FILE"
    )
    api_tls_key: str | None = setting(None, str, "PEM private key of --api-tls-cert", optional=True, metavar="FILE")

    def validate(self) -> None:
        """Raise ConfigError for the first invalid setting."""
        for name in ("port", "api_port"):
            value = getattr(self, name)
            if not 0 <= value <= 65535:
                raise ConfigError(f"{name} must be a TCP port 0-65535, got {value!r}")
        if self.port == self.api_port and self.port != 0 and self.host == self.api_host:
            raise ConfigError(f"port and api_port must differ, both are {self.port}")
        if self.max_connections_per_ip is not None and self.max_connections_per_ip < 1:
            raise ConfigError(f"max_connections_per_ip must be positive, got {self.max_connections_per_ip}")
        if self.max_connections is not None and self.max_connections < 1:
            raise ConfigError(f"max_connections must be positive, got {self.max_connections}")
        if self.max_message_size < 128:
            raise ConfigError(f"max_message_size must be at least 128 bytes, got {self.max_message_size}")
        if self.api_max_connections < 1:
            raise ConfigError(f"api_max_connections must be positive, got {self.api_max_connections}")
        if not 0 < self.api_idle_timeout < math.inf:
            raise ConfigError(f"api_idle_timeout must be a finite number of seconds > 0, got {self.api_idle_timeout}")
        if self.max_subscriptions < 1:
            raise ConfigError(f"max_subscriptions must be positive, got {self.max_subscriptions}")
        if self.write_buffer_limit < 1:
            raise ConfigError(f"write_buffer_limit must be positive, got {self.write_buffer_limit}")
        if self.max_worker_subscriptions is not None and self.max_worker_subscriptions < 1:
            raise ConfigError(f"max_worker_subscriptions must be positive, got {self.max_worker_subscriptions}")
        if not 0 < self.ping_timeout < self.ping_interval < math.inf:
            raise ConfigError(
                f"ping_timeout ({self.ping_timeout}) must be > 0 and less than ping_interval ({self.ping_interval})"
            )
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
        if self.compression_threshold < 0:
            raise ConfigError(f"compression_threshold must be >= 0 bytes, got {self.compression_threshold}")
        if self.echo_path is not None and not self.echo_path.startswith("/"):
            raise ConfigError(f"echo_path must start with '/', got {self.echo_path!r}")
        if self.echo_path in ("/ws", "/healthz", "/readyz", "/", "/wsd.js"):
            raise ConfigError(f"echo_path {self.echo_path!r} collides with a built-in path")
        for name in ("drain_window", "lame_duck", "history_ttl"):
            value = getattr(self, name)
            if not 0 <= value < math.inf:
                raise ConfigError(f"{name} must be a finite number of seconds >= 0, got {value}")
        if self.history_size < 0:
            raise ConfigError(f"history_size must be >= 0, got {self.history_size}")
        if self.cluster:
            from wsd.server.cluster.urls import parse_cluster_urls

            try:
                parse_cluster_urls(self.cluster)
            except ValueError as exc:
                raise ConfigError(f"cluster: {exc}") from None
        for name in ("stop_timeout", "worker_timeout", "slow_reader_timeout", "cluster_timeout", "auth_timeout"):
            value = getattr(self, name)
            if not 0 < value < math.inf:
                raise ConfigError(f"{name} must be a finite number of seconds > 0, got {value}")
        self._validate_security()

    def _validate_security(self) -> None:
        """The shape of the auth, API key, Origin and TLS settings (files are read at start:
        wsd.server.control.security)."""
        from wsd.server.auth.keys import AuthSettingsError
        from wsd.server.auth.origin import OriginPolicy, OriginSettingsError
        from wsd.server.auth.ratelimit import RateLimiter

        try:
            auth_settings(self)
            if self.allowed_origins is not None:
                OriginPolicy(self.allowed_origins)
        except (AuthSettingsError, OriginSettingsError) as exc:
            raise ConfigError(str(exc)) from None
        try:
            RateLimiter(self.client_rate)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if self.api_key is not None and self.api_key_file is not None:
            raise ConfigError("give api_key or api_key_file, not both")
        for cert, key in (("tls_cert", "tls_key"), ("api_tls_cert", "api_tls_key")):
            if (getattr(self, cert) is None) != (getattr(self, key) is None):
                given, missing = (cert, key) if getattr(self, cert) is not None else (key, cert)
                raise ConfigError(f"{given} needs {missing} too (a certificate and its private key)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SETTINGS: dict[str, Setting] = {f.name: f.metadata["setting"] for f in dataclasses.fields(Config)}


def check_value(name: str, value: Any) -> Any:
    """The value of setting `name` from a file or a flag, or ConfigError saying what is wrong."""
    spec = SETTINGS[name]
    if value is None and spec.optional:
        return None
    if spec.parse is not None:
        try:
            return spec.parse(value)
        except ValueError as exc:
            raise ConfigError(f"{name} {exc}") from None
    if spec.kind is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ConfigError(f"{name} must be a list of strings, got {type(value).__name__} {value!r}")
        return list(value)
    if spec.kind is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError:
            raise ConfigError(f"{name} must be a number of seconds, got an integer too large for one") from None
    if not isinstance(value, spec.kind) or (spec.kind is int and isinstance(value, bool)):
        raise ConfigError(f"{name} must be {_kind_name(spec.kind)}, got {type(value).__name__} {value!r}")
    if spec.choices is not None:
        if value.lower() not in spec.choices:
            raise ConfigError(f"{name} must be one of {', '.join(spec.choices)}, got {value!r}")
        value = value.lower()
    return value


def _kind_name(kind: type) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list"}[kind]


def auth_settings(config: Config) -> AuthSettings:
    """The auth part of `config` as wsd.server.auth takes it (raises AuthSettingsError)."""
    from wsd.server.auth.keys import AuthSettings

    return AuthSettings(
        secret=config.auth_secret,
        secret_file=config.auth_secret_file,
        public_key_file=config.auth_public_key,
        audience=config.auth_audience,
        issuer=config.auth_issuer,
        public_channels=tuple(config.public_channels),
    )


# TOML tables besides [serve]: each key of the table is a setting under another name ([cluster]
# redis = [...], timeout = S: the settings cluster and cluster_timeout).
TABLES: dict[str, dict[str, str]] = {
    "cluster": {"redis": "cluster", "timeout": "cluster_timeout"},
    "auth": {
        "secret": "auth_secret",
        "secret_file": "auth_secret_file",
        "public_key_file": "auth_public_key",
        "audience": "auth_audience",
        "issuer": "auth_issuer",
    },
}


def load_toml(path: str) -> dict:
    """Read a TOML config file into a settings dict, rejecting unknown keys with a clear error."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    # tomllib lets three other errors through (found by fuzzing, tests/fuzz/fuzz_config.py): bytes that
    # are not UTF-8, integers of more than 4300 digits (ValueError), and arrays or inline tables nested
    # ~1,000 deep (RecursionError). Each is a bad file like any other, never a traceback.
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start}); TOML files are UTF-8") from None
    import tomllib  # here: a worker never reads a file, and need not hold the parser

    try:
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"config file {path} is not valid TOML: arrays or tables nested too deeply") from None
    # Accept a [serve] table as well as top-level keys.
    serve = data.pop("serve", {})
    if not isinstance(serve, dict):
        raise ConfigError(f"config file {path}: 'serve' must be a table ([serve]), got {type(serve).__name__}")
    settings = dict(serve)
    for table, names in TABLES.items():
        if table not in data:
            continue
        values = data.pop(table)
        if not isinstance(values, dict) and table in SETTINGS:
            settings[table] = values  # `cluster = [...]`: the setting itself, at the top level
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"config file {path}: '{table}' must be a table ([{table}]), got {type(values).__name__}")
        for key, value in values.items():
            name = names.get(key.replace("-", "_"))
            if name is None:
                raise ConfigError(
                    f"config file {path}: unknown setting {key!r} in [{table}]; known: {', '.join(sorted(names))}"
                )
            settings[name] = value
    settings.update(data)
    normalized = {}
    for key, value in settings.items():
        name = key.replace("-", "_")
        if name not in SETTINGS:
            raise ConfigError(f"config file {path}: unknown setting {key!r}; known: {', '.join(sorted(SETTINGS))}")
        try:
            normalized[name] = check_value(name, value)
        except ConfigError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
    return normalized


def build_config(file_settings: dict, flag_settings: dict) -> Config:
    """Defaults, then the file, then the flags that were given (None means 'not given')."""
    config = Config()
    for source in (file_settings, flag_settings):
        for name, value in source.items():
            if value is not None:
                setattr(config, name, check_value(name, value))
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
    workers = max(cores, math.ceil(config.max_connections / connections_per_worker_cap()))
    # Each worker's publish API connections come out of its descriptors too.
    while workers * per_worker_connection_limit(config, workers) < config.max_connections:
        workers += 1
    return workers


def per_worker_connection_limit(config: Config, workers: int) -> int:
    """A worker stops accepting at this many connections (before it runs out of descriptors: its
    publish API connections come out of the same budget)."""
    cap = max(1, connections_per_worker_cap() - per_worker_api_connection_limit(config, workers))
    if config.max_connections is None:
        return cap
    return min(cap, math.ceil(config.max_connections / workers))


def per_worker_api_connection_limit(config: Config, workers: int) -> int:
    return math.ceil(config.api_max_connections / workers)


def admin_socket_path(config: Config) -> str:
    return str(Path(config.admin_socket).absolute())
