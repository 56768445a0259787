"""Parsing of `--cluster` URLs into the Redis targets wsd connects to, with errors users can act on.

Accepted forms (see docs/cluster.md):

- ``redis://[user:password@]host[:port][/db]`` and ``rediss://...`` (TLS): one Redis instance. Several
  such URLs are independent instances that channels are spread over by a consistent hash.
- ``redis+cluster://[user:password@]host:port[,host:port...]`` (``rediss+cluster://`` with TLS): the seed
  nodes of one Redis Cluster; it must then be the only URL.

Passwords never leave this module in a printable form: every target carries a ``shown`` URL with the
password replaced by ``***``, and a ``key`` (host, port and db only) that the consistent hash uses, so
a changed password does not move channels.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qs, unquote

from wsd.server.cluster.errors import ClusterConfigError

DEFAULT_PORT = 6379
_SINGLE_SCHEMES = {"redis": False, "rediss": True}
_CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}
# TLS options that may follow a rediss:// URL as a query string, passed to redis-py as they are.
_TLS_OPTIONS = {"ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname"}
_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^\s:/\[\]]+))(?::(?P<port>[^:]*))?$")


@dataclass(frozen=True)
class RedisTarget:
    """One Redis server to connect to (an instance, or a seed node of a cluster)."""

    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    db: int = 0
    tls: bool = False
    tls_options: tuple[tuple[str, str], ...] = ()

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def key(self) -> str:
        """What the consistent hash is keyed by: address and db, never credentials."""
        return f"{self.address}/{self.db}"

    @property
    def shown(self) -> str:
        """The URL for logs and status: the password is never included."""
        scheme = "rediss" if self.tls else "redis"
        user = self.username or ""
        credentials = f"{user}:***@" if self.password is not None else (f"{user}@" if user else "")
        return f"{scheme}://{credentials}{self.address}/{self.db}"

    def with_address(self, host: str, port: int) -> RedisTarget:
        """The same credentials and TLS settings for another node (a cluster master found later)."""
        return RedisTarget(host, port, self.username, self.password, 0, self.tls, self.tls_options)


@dataclass(frozen=True)
class ClusterSpec:
    """What `--cluster` asked for: independent instances, or one Redis Cluster given by seeds."""

    mode: Literal["instances", "cluster"]
    targets: tuple[RedisTarget, ...]

    @property
    def shown(self) -> list[str]:
        return [target.shown for target in self.targets]


def _fail(url: str, problem: str) -> ClusterConfigError:
    return ClusterConfigError(f"--cluster {_redact(url)}: {problem}")


def _redact(url: str) -> str:
    """The URL as given, with anything between '://user:' and '@' replaced, for error messages."""
    return re.sub(r"(://[^/@:]*:)[^@/]*@", r"\1***@", url)


def _port(url: str, text: str | None) -> int:
    if text is None or text == "":
        return DEFAULT_PORT
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise _fail(url, f"port must be a number 1-65535, got {text!r}")
    return int(text)


def _host_port(url: str, text: str) -> tuple[str, int]:
    match = _HOST_PORT.match(text)
    if match is None or not (match["v6"] or match["host"]):
        raise _fail(url, f"expected host:port, got {text!r}")
    return match["v6"] or match["host"], _port(url, match["port"])


def _credentials(url: str, netloc: str) -> tuple[str | None, str | None, str]:
    if "@" not in netloc:
        return None, None, netloc
    userinfo, _, hosts = netloc.rpartition("@")
    user, has_password, password = userinfo.partition(":")
    return (unquote(user) or None), (unquote(password) if has_password else None), hosts


def _tls_options(url: str, query: str, tls: bool) -> tuple[tuple[str, str], ...]:
    if not query:
        return ()
    options = parse_qs(query, keep_blank_values=True, strict_parsing=False)
    unknown = sorted(set(options) - _TLS_OPTIONS)
    if unknown:
        raise _fail(url, f"unknown option {unknown[0]!r}; allowed: {', '.join(sorted(_TLS_OPTIONS))}")
    if not tls:
        raise _fail(url, "TLS options need a rediss:// URL")
    return tuple(sorted((name, values[-1]) for name, values in options.items()))


def parse_url(url: str) -> tuple[Literal["instances", "cluster"], tuple[RedisTarget, ...]]:
    """Parse one `--cluster` URL into its mode and target(s); ClusterConfigError if malformed."""
    if not isinstance(url, str) or "://" not in url:
        raise ClusterConfigError(
            f"--cluster {url!r}: expected redis://[user:password@]host:port[/db], rediss://..., "
            "or redis+cluster://host:port[,host:port...]"
        )
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    if scheme not in _SINGLE_SCHEMES and scheme not in _CLUSTER_SCHEMES:
        raise _fail(url, f"unknown scheme {scheme!r}; use redis, rediss, redis+cluster or rediss+cluster")
    tls = _SINGLE_SCHEMES.get(scheme, _CLUSTER_SCHEMES.get(scheme, False))
    # urlsplit cannot take a comma-separated host list, so the authority is split off by hand.
    netloc, _, tail = rest.partition("/")
    path, _, query = tail.partition("?")
    if "?" in netloc:
        netloc, _, query = netloc.partition("?")
    if "#" in url:
        raise _fail(url, "a URL fragment ('#...') is not allowed")
    user, password, hosts = _credentials(url, netloc)
    options = _tls_options(url, query, tls)
    if not hosts:
        raise _fail(url, "no host given")
    if scheme in _CLUSTER_SCHEMES:
        if path:
            raise _fail(url, "a Redis Cluster has only database 0: remove the /db path")
        seeds = [_host_port(url, part) for part in hosts.split(",")]
        if len(set(seeds)) != len(seeds):
            raise _fail(url, "a seed node is listed twice")
        return "cluster", tuple(RedisTarget(h, p, user, password, 0, tls, options) for h, p in seeds)
    if "," in hosts:
        raise _fail(url, "several hosts in one URL need redis+cluster://; for independent instances "
                         "give --cluster once per instance")  # fmt: skip
    host, port = _host_port(url, hosts)
    if path and (not path.isdigit() or int(path) > 1_000_000):
        raise _fail(url, f"the path must be a database number such as /0, got /{path}")
    return "instances", (RedisTarget(host, port, user, password, int(path or 0), tls, options),)


def parse_cluster_urls(urls: Sequence[str] | str) -> ClusterSpec:
    """Parse every `--cluster` URL (TOML ``[cluster] redis = [...]``) into one ClusterSpec."""
    if isinstance(urls, str):
        urls = [urls]
    if not urls:
        raise ClusterConfigError("--cluster: no Redis URL given")
    parsed = [parse_url(url) for url in urls]
    if any(mode == "cluster" for mode, _ in parsed):
        if len(parsed) > 1:
            raise ClusterConfigError(
                "--cluster: a redis+cluster:// URL must be the only --cluster URL "
                "(list every seed node in it, comma-separated)"
            )
        return ClusterSpec("cluster", parsed[0][1])
    targets = tuple(target for _, (target,) in parsed)
    keys = [target.key for target in targets]
    for key in keys:
        if keys.count(key) > 1:
            raise ClusterConfigError(f"--cluster: the instance {key} is listed twice")
    return ClusterSpec("instances", targets)
