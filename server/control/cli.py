"""The `wsd` command: `wsd serve` runs the server, `wsd check-config` validates its settings without
starting anything, `wsd ctl` talks to a running server, `wsd balancer` runs the front."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from wsd.server.control.config import SETTINGS, Config, ConfigError, Setting, check_value


def _flag_type(name: str, spec: Setting):
    """argparse type of one setting's flag: the text converted to the setting's kind, then checked."""

    def convert(text: str) -> Any:
        value: Any = text
        if spec.parse is None and spec.kind in (int, float):
            try:
                value = spec.kind(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"must be {'an integer' if spec.kind is int else 'a number'}, "
                                                 f"got {text!r}") from None
        try:
            return check_value(name, value)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{name} ")) from None

    convert.__name__ = spec.kind.__name__  # argparse names the type in its error messages
    return convert


def _default_text(name: str, spec: Setting) -> str:
    if spec.default_text is not None:
        return spec.default_text
    default = getattr(Config(), name)
    return "off" if default is None else str(default)


class _UsageError(Exception):
    """A flag `wsd check-config` cannot take (argparse would exit 2; check-config exits 1)."""


class _CheckingParser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's hook for every usage error
        raise _UsageError(message)


def serve_parser(
    prog: str = "wsd serve",
    description: str = "Run the WebSocket push server: a supervisor and its worker processes.",
    parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser,
) -> argparse.ArgumentParser:
    """`wsd serve`'s flags: one per Config setting, its help and default taken from the declaration."""
    parser = parser_class(prog=prog, description=description, argument_default=None)
    parser.add_argument("--config", metavar="FILE", help="TOML file with settings (flags win over it)")
    for name, spec in SETTINGS.items():
        flag = "--" + name.replace("_", "-")
        help_text = f"{spec.help} (default: {_default_text(name, spec)})"
        if spec.kind is list and spec.parse is None:  # repeatable: each use adds one item
            # (Lists with a parser take one comma list: --public-channels news,room:*.)
            parser.add_argument(flag, action="append", metavar=spec.metavar, help=help_text)
        elif spec.choices is not None:
            parser.add_argument(flag, choices=spec.choices, help=help_text, type=str.lower)
        else:
            parser.add_argument(flag, type=_flag_type(name, spec), metavar=spec.metavar, help=help_text)
    return parser


def serve(argv: list[str]) -> int:
    from wsd.server.control.config import build_config, load_toml
    from wsd.server.control.listeners import BindError
    from wsd.server.logs import setup_logging

    args = vars(serve_parser().parse_args(argv))
    config_file = args.pop("config")
    try:
        file_settings = load_toml(config_file) if config_file else {}
        config = build_config(file_settings, args)
        # Keys, secrets and certificates are read once here: a bad file stops the start with its
        # message rather than crash-looping every worker.
        from wsd.server.control.security import exposure_checks, load_security

        security = load_security(config)
        open_access = exposure_checks(config, security)
    except ConfigError as exc:
        print(f"wsd serve: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level, "supervisor", config.log_format)
    if open_access is not None:
        logging.getLogger("wsd.supervisor").warning(open_access)
    try:
        from setproctitle import setproctitle

        setproctitle("wsd: supervisor")
    except ImportError:  # pragma: no cover
        pass
    from wsd.server.control.admin import AdminSocketError
    from wsd.server.control.supervisor import Supervisor

    try:
        flags = {k: v for k, v in args.items() if v is not None}
        return Supervisor(config, config_file, flags, api_key=security.api_key).run()
    except (BindError, AdminSocketError) as exc:
        print(f"wsd serve: {exc.strerror if isinstance(exc, BindError) else exc}", file=sys.stderr)
        return 1


def check_config(argv: list[str]) -> int:
    """`wsd check-config [--config FILE] [flags]`: the settings `wsd serve` would run with, checked
    without binding, forking or creating anything (like `nginx -t`). 0 and `ok`, or 1 and the error."""
    from wsd.server.bus.segment import MAX_SLOTS
    from wsd.server.control.config import build_config, load_toml, resolve_worker_count

    parser = serve_parser(
        "wsd check-config",
        "Check a config file and flags as `wsd serve` would take them, without starting anything.",
        _CheckingParser,
    )
    try:
        args = vars(parser.parse_args(argv))
    except _UsageError as exc:
        print(f"wsd check-config: {exc}", file=sys.stderr)
        return 1
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 1
    config_file = args.pop("config")
    try:
        config = build_config(load_toml(config_file) if config_file else {}, args)
        workers = resolve_worker_count(config)
        if 2 * workers > MAX_SLOTS:
            raise ConfigError(f"workers: {workers} requested; at most {MAX_SLOTS // 2} are supported")
        # The key, secret and certificate files, and protected mode, as `wsd serve` checks them.
        from wsd.server.control.security import exposure_checks, load_security

        open_access = exposure_checks(config, load_security(config))
    except ConfigError as exc:
        print(f"wsd check-config: {exc}", file=sys.stderr)
        return 1
    if open_access is not None:
        print(f"wsd check-config: warning: {open_access}", file=sys.stderr)
    print("ok")
    return 0


def installed_version() -> str:
    """The version of the installed `wsd` distribution (one source: pyproject.toml)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("wsd")
    except PackageNotFoundError:  # pragma: no cover - running from sources that were never installed
        return "unknown (not installed)"


USAGE = """usage: wsd COMMAND [ARGS]   (wsd --version: the installed version)

commands:
  serve         run the WebSocket push server (wsd serve --help)
  check-config  check a config file and flags without starting anything (wsd check-config --help)
  ctl           talk to a running server over its admin socket (wsd ctl --help)
  balancer      run the hash front that spreads connections over servers (wsd balancer --help)
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
    if command == "check-config":
        return check_config(rest)
    if command == "ctl":
        from wsd.server.control.ctl import main as ctl_main

        return ctl_main(rest)
    if command == "balancer":
        from wsd.balancer.cli import main as balancer_main

        return balancer_main(rest)
    print(f"wsd: unknown command {command!r}\n{USAGE}", file=sys.stderr, end="")
    return 2


if __name__ == "__main__":
    sys.exit(main())
