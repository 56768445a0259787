"""The `wsd` command: `wsd serve` runs the server, `wsd ctl` talks to it, `wsd balancer` runs the front."""

from __future__ import annotations

import argparse
import sys

from wsd.server.admin import DEFAULT_ADMIN_SOCKET


def _workers(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        count = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'auto', got {value!r}") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'auto', got {value!r}")
    return count


def serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsd serve",
        description="Run the WebSocket push server: a supervisor and its worker processes.",
        argument_default=None,
    )
    add = parser.add_argument
    add("--config", metavar="FILE", help="TOML file with settings (flags win over it)")
    add("--host", help="address for WebSocket clients (default 127.0.0.1)")
    add("--port", type=int, help="port for WebSocket clients (default 8080)")
    add("--api-host", help="address of the publish API (default 127.0.0.1)")
    add("--api-port", type=int, help="port of the publish API (default 8081)")
    add("--workers", type=_workers, help="worker processes, or 'auto' (default: number of cores)")
    add("--max-connections", type=int, help="connections the server should hold in all (sizes --workers auto)")
    add("--max-message-size", type=int, help="largest client message in bytes (default 65536); larger: close 1009")
    add("--max-subscriptions", type=int, help="channels one connection may subscribe to (default 1000)")
    add("--write-buffer-limit", type=int, help="unsent bytes per client before it is cut off with 1013")
    add("--admin-socket", metavar="PATH", help=f"admin Unix socket (default {DEFAULT_ADMIN_SOCKET})")
    add("--echo-path", metavar="PATH", help="also serve a WebSocket echo endpoint at PATH (for Autobahn)")
    add("--ring-size", type=int, help="bytes of shared-memory bus ring per worker (power of two)")
    add("--channel-table-slots", type=int, help="channels each worker can sequence (power of two)")
    add("--stop-timeout", type=float, help="seconds a graceful stop (SIGINT, ctl stop) may take (default 10)")
    add("--drain-window", type=float, help="seconds over which SIGTERM and reload spread client closes (default 30)")
    add("--history-size", type=int, help="messages kept per channel for resume (default 100)")
    add("--history-ttl", type=float, help="seconds a message stays available for resume (default 300)")
    add("--log-level", choices=["debug", "info", "warning", "error"], help="default info")
    return parser


def serve(argv: list[str]) -> int:
    from wsd.server.config import ConfigError, build_config, load_toml
    from wsd.server.listeners import BindError
    from wsd.server.logs import setup_logging

    args = vars(serve_parser().parse_args(argv))
    config_file = args.pop("config")
    try:
        file_settings = load_toml(config_file) if config_file else {}
        config = build_config(file_settings, args)
    except ConfigError as exc:
        print(f"wsd serve: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level, "supervisor")
    try:
        from setproctitle import setproctitle

        setproctitle("wsd: supervisor")
    except ImportError:  # pragma: no cover
        pass
    from wsd.server.admin import AdminSocketError
    from wsd.server.supervisor import Supervisor

    try:
        return Supervisor(config, config_file, {k: v for k, v in args.items() if v is not None}).run()
    except (BindError, AdminSocketError) as exc:
        print(f"wsd serve: {exc.strerror if isinstance(exc, BindError) else exc}", file=sys.stderr)
        return 1


def installed_version() -> str:
    """The version of the installed `wsd` distribution (one source: pyproject.toml)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("wsd")
    except PackageNotFoundError:  # pragma: no cover - running from sources that were never installed
        return "unknown (not installed)"


USAGE = """usage: wsd COMMAND [ARGS]   (wsd --version: the installed version)

commands:
  serve      run the WebSocket push server (wsd serve --help)
  ctl        talk to a running server over its admin socket (wsd ctl --help)
  balancer   run the hash front that spreads connections over servers (wsd balancer --help)
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        print(f"wsd {installed_version()}")
        return 0
    command, rest = argv[0], argv[1:]
    if command == "serve":
        return serve(rest)
    if command == "ctl":
        from wsd.server.ctl import main as ctl_main

        return ctl_main(rest)
    if command == "balancer":
        from wsd.balancer.cli import main as balancer_main

        return balancer_main(rest)
    print(f"wsd: unknown command {command!r}\n{USAGE}", file=sys.stderr, end="")
    return 2


if __name__ == "__main__":
    sys.exit(main())
