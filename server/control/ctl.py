"""`wsd ctl`: the command-line client of the supervisor's admin socket (server/control/admin.py).

    wsd ctl [--admin-socket PATH] [--json] COMMAND [ARGS]

Each command sends one JSON request line and prints the reply's `result`: as a human-readable
table or sentence by default, as the raw JSON document with `--json` (for scripts). Exit status:
0 success, 1 wsd unreachable or the command failed, 2 bad usage (argparse's convention).
Adding a command is one entry in `COMMANDS`.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from wsd.server.control.admin import DEFAULT_ADMIN_SOCKET, MAX_REQUEST_BYTES
from wsd.server.stats import TOTALS

PROG = "wsd ctl"
# A reply bigger than this is not something wsd sends; stop reading instead of growing forever.
MAX_REPLY_BYTES = 16 * 1024 * 1024


class CtlError(Exception):
    """A failure to report as `wsd ctl: <message>` with exit status 1."""


# -- human output ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """One column of the status table: a field of each worker's entry and how to show it."""

    header: str
    field: str
    show: Callable[[object], str] = lambda value: _text(value)

    def cell(self, entry: dict) -> str:
        # Some cells show two fields: "current/limit", "used/size", "horizon, lapped or not".
        if self.field == "connections":
            return _connections(entry.get("connections"), entry.get("max_connections"))
        if self.field == "table_used":
            return _table_fill(entry.get("table_used"), entry.get("table_size"))
        if self.field == "history_horizon_s":
            return _horizon(entry.get("history_horizon_s"), entry.get("ring_lapped"))
        return self.show(entry.get(self.field))


# The numbers come from the stats block (wsd.server.stats) or the supervisor (state, RSS, CPU).
STATUS_COLUMNS = (
    Column("SLOT", "slot"),
    Column("PID", "pid"),
    Column("STATE", "state"),
    Column("ACCEPTING", "accepting", lambda value: _yes_no(value)),
    Column("CONNS", "connections"),
    Column("CHANNELS", "channels"),
    Column("RSS", "rss_bytes", lambda value: _mebibytes(value)),
    Column("CPU", "cpu_percent", lambda value: _percent(value)),
    Column("MSGS IN", "msgs_in"),
    Column("MSGS OUT", "msgs_out"),
    Column("BUS LAG", "bus_lag"),
    Column("OVERRUNS", "overruns"),
    Column("SLOW DISC", "slow_disconnects"),
    Column("TABLE", "table_used"),
    Column("HISTORY", "history_horizon_s"),
    Column("RESTARTS", "restarts"),
)
# Fields the totals row shows: what the supervisor sums (declared in wsd.server.stats).
SUMMED = {*TOTALS, "rss_bytes", "cpu_percent"}


def render_status(result: object) -> str:
    """Render a `status` result as a header line, a per-worker table and a totals row.

    Every field is optional so that an older or newer supervisor never makes the table crash:
    a missing or mistyped value prints as "-", unknown fields are ignored.
    """
    if not isinstance(result, dict):
        return render_generic(result)
    lines = []
    supervisor = result.get("supervisor")
    if isinstance(supervisor, dict):
        lines.append(
            f"wsd supervisor pid {_text(supervisor.get('pid'))}, {_text(supervisor.get('state'))}, "
            f"up {_duration(supervisor.get('uptime_s'))}, epoch {_text(supervisor.get('epoch'))}"
        )
    header = [column.header for column in STATUS_COLUMNS]
    # Left-align the words, right-align the numbers.
    left_aligned = {"SLOT", "STATE", "ACCEPTING"}
    rows = []
    workers = result.get("workers")
    for worker in workers if isinstance(workers, list) else []:
        if isinstance(worker, dict):
            rows.append([column.cell(worker) for column in STATUS_COLUMNS])
    totals = result.get("totals")
    if isinstance(totals, dict):
        row = [column.cell(totals) if column.field in SUMMED else "" for column in STATUS_COLUMNS]
        rows.append(["total", *row[1:]])
    lines.extend(_table(header, rows, left_aligned))
    cluster = result.get("cluster")
    if isinstance(cluster, dict):
        lines.extend(render_cluster(cluster))
    return "\n".join(lines)


def render_cluster(cluster: dict) -> list[str]:
    """The `cluster` part of a status (with --cluster): one line for the host, a row per Redis."""
    lines = [
        "",
        f"cluster node {_text(cluster.get('node_id'))} ({_text(cluster.get('mode'))}): {_text(cluster.get('state'))}, "
        f"{_text(cluster.get('channels'))} channels subscribed, {_text(cluster.get('catch_ups'))} catch-ups, "
        f"{_text(cluster.get('gaps'))} gaps",
    ]
    rows = []
    for shard in cluster.get("shards") or []:
        if isinstance(shard, dict):
            rtt = shard.get("publish_rtt_ms")
            rows.append([_text(shard.get("url")), _text(shard.get("state")), _text(shard.get("channels")),
                         "-" if not _is_number(rtt) else f"{rtt:.2f} ms", _text(shard.get("catch_ups")),
                         _text(shard.get("error")) or "-"])  # fmt: skip
    lines.extend(_table(["REDIS", "STATE", "CHANNELS", "PUBLISH RTT", "CATCH-UPS", "ERROR"], rows,
                        {"REDIS", "STATE", "ERROR"}))  # fmt: skip
    return lines


def render_publish(result: object) -> str:
    if isinstance(result, dict) and "channel" in result and "offset" in result:
        return f"published to {result['channel']} at offset {result['offset']}"
    return render_generic(result)


def render_stop(result: object) -> str:
    return "stopping"


def render_log_level(result: object) -> str:
    if isinstance(result, dict) and "level" in result:
        return f"log level {result['level']} (was {result.get('previous', '-')}) in the supervisor and every worker"
    return render_generic(result)


def render_disconnect(result: object) -> str:
    if isinstance(result, dict) and "disconnected" in result:
        return f"{result['disconnected']} connection(s) closed with 4000"
    return render_generic(result)


def render_unsubscribe(result: object) -> str:
    if isinstance(result, dict) and "unsubscribed" in result:
        return f"{result['unsubscribed']} subscription(s) ended"
    return render_generic(result)


def render_channels(result: object) -> str:
    """The channel table of `ctl channels`, or one channel's line of `ctl channels NAME`."""
    if isinstance(result, dict) and "subscribers" in result and "channel" in result:
        return (f"{result['channel']}: {result['subscribers']} subscriber(s), offset {_text(result.get('offset'))}, "
                f"epoch {_text(result.get('epoch'))}")  # fmt: skip
    if isinstance(result, dict) and isinstance(result.get("channels"), list):
        channels = [c for c in result["channels"] if isinstance(c, dict)]
        rows = [[_text(c.get("channel")), _text(c.get("subscribers"))] for c in channels]
        if not rows:
            return "no channel has a subscriber"
        return "\n".join(_table(["CHANNEL", "SUBSCRIBERS"], rows, {"CHANNEL"}))
    return render_generic(result)


def render_generic(result: object) -> str:
    """Fallback for commands without a dedicated renderer (and for unexpected result shapes)."""
    if result is None:
        return "ok"
    if isinstance(result, str):
        return result
    if isinstance(result, dict) and all(not isinstance(v, dict | list) for v in result.values()):
        return "\n".join(f"{key}: {_text(value)}" for key, value in result.items()) or "ok"
    return json.dumps(result, indent=2)


def _table(header: list[str], rows: list[list[str]], left_aligned: set[str]) -> list[str]:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = []
    for row in [header, *rows]:
        cells = [
            cell.ljust(width) if name in left_aligned else cell.rjust(width)
            for name, cell, width in zip(header, row, widths, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _text(value: object) -> str:
    if value is None or isinstance(value, dict | list):
        return "-"
    return str(value)


def _yes_no(value: object) -> str:
    # Upper-case NO so a worker that stopped accepting stands out in a column of "yes".
    if isinstance(value, bool):
        return "yes" if value else "NO"
    return "-"


def _connections(current: object, limit: object) -> str:
    if not _is_number(current):
        return "-"
    return f"{current}/{limit}" if _is_number(limit) else str(current)


def _table_fill(used: object, size: object) -> str:
    """Channel-table entries used of its slots, with the share (eviction starts at 90%)."""
    if not (_is_number(used) and _is_number(size)) or not size:
        return "-"
    return f"{used}/{size} ({100 * used / size:.0f}%)"


def _horizon(seconds: object, lapped: object) -> str:
    """How far back the ring's history reaches; "all" while it has never lapped."""
    if not _is_number(seconds):
        return "-"
    return _duration(seconds) if lapped else f"all ({_duration(seconds)})"


def _mebibytes(value: object) -> str:
    return f"{value / (1024 * 1024):.1f} MiB" if _is_number(value) else "-"


def _percent(value: object) -> str:
    return f"{value:.1f}%" if _is_number(value) else "-"


def _duration(seconds: object) -> str:
    if not _is_number(seconds):
        return "-"
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


# -- commands -------------------------------------------------------------------------------------


def _json_value(text: str) -> Any:
    """argparse type for the JSON argument of `publish`: refuse bad JSON before contacting wsd."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}): {text!r}") from exc


def _publish_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("channel", metavar="CHANNEL", help="channel name")
    parser.add_argument("message", metavar="JSON", type=_json_value, help="message body, as JSON")


def _log_level_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("level", metavar="LEVEL", type=str.lower, choices=("debug", "info", "warning", "error"),
                        help="debug, info, warning or error")  # fmt: skip


def _user_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("user", metavar="USER", help="the user id (the `sub` of the user's tokens)")


def _unsubscribe_arguments(parser: argparse.ArgumentParser) -> None:
    _user_argument(parser)
    parser.add_argument("channel", metavar="CHANNEL", help="channel name")


def _channels_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("channel", metavar="CHANNEL", nargs="?", default=None,
                        help="one channel: its subscribers, offset and epoch (default: every channel)")  # fmt: skip


def _drain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--window", dest="window_s", metavar="SECONDS", type=float, default=30.0,
        help="spread client disconnects over this many seconds (default: 30)",
    )  # fmt: skip


@dataclass(frozen=True)
class Command:
    """One `wsd ctl` subcommand; its parsed arguments (by argparse dest) become the request args."""

    help: str
    render: Callable[[object], str] = render_generic
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    timeout_s: float = 60.0


COMMANDS: dict[str, Command] = {
    "status": Command("per-worker connections, channels, memory, CPU, traffic", render_status, timeout_s=10),
    "publish": Command("publish a JSON message to a channel", render_publish, _publish_arguments),
    "stop": Command("stop wsd gracefully", render_stop),
    "drain": Command("stop accepting and move clients off this host", add_arguments=_drain_arguments),
    "reload": Command("replace the workers with fresh ones, one slot at a time"),
    "log-level": Command("change the log level of the running server", render_log_level, _log_level_arguments,
                         timeout_s=10),
    "disconnect": Command("close every connection of a user (close code 4000), on every worker",
                          render_disconnect, _user_argument, timeout_s=15),
    "unsubscribe": Command("end a user's subscription to a channel, on every worker", render_unsubscribe,
                           _unsubscribe_arguments, timeout_s=15),
    "channels": Command("channels with subscribers and how many, on every worker", render_channels,
                        _channels_arguments, timeout_s=15),
}  # fmt: skip

# Parser options that belong to `wsd ctl` itself, not to the request sent to wsd.
_GLOBAL_DESTS = {"admin_socket", "json", "command"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Control a running wsd through its admin socket.")
    parser.add_argument(
        "--admin-socket", metavar="PATH", default=DEFAULT_ADMIN_SOCKET,
        help=f"the admin socket of the wsd to control (default: {DEFAULT_ADMIN_SOCKET})",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the raw result as JSON, for scripts")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in COMMANDS.items():
        subparser = subparsers.add_parser(name, help=command.help, description=command.help)
        # Also accept the global options after the command (`wsd ctl status --json`); SUPPRESS
        # keeps an absent one from overwriting the value given before the command.
        hidden = {"default": argparse.SUPPRESS, "help": argparse.SUPPRESS}
        subparser.add_argument("--admin-socket", metavar="PATH", **hidden)
        subparser.add_argument("--json", action="store_true", **hidden)
        if command.add_arguments is not None:
            command.add_arguments(subparser)
    return parser


# -- transport ------------------------------------------------------------------------------------


def request(socket_path: str, command: str, args: dict, timeout_s: float) -> object:
    """Send one command to the wsd listening at `socket_path` and return its result.

    Raises CtlError with a message fit for the user when wsd cannot be reached, does not answer
    in time, answers garbage, or refuses the command.
    """
    line = json.dumps({"cmd": command, "args": args}, separators=(",", ":")).encode() + b"\n"
    if len(line) > MAX_REQUEST_BYTES:
        raise CtlError(f"request is {len(line)} bytes; wsd accepts at most {MAX_REQUEST_BYTES}")
    where = f"wsd at {socket_path}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect(socket_path)
        except FileNotFoundError:
            raise CtlError(
                f"cannot reach {where}: no such file (is wsd serve running? use --admin-socket)"
            ) from None
        except ConnectionRefusedError:
            raise CtlError(
                f"cannot reach {where}: connection refused (stale socket file? is wsd serve running?)"
            ) from None
        except PermissionError:
            raise CtlError(
                f"cannot reach {where}: permission denied (the socket is mode 0600: "
                "run wsd ctl as the user that started wsd)"
            ) from None
        except TimeoutError:
            raise CtlError(f"cannot reach {where}: no answer within {timeout_s:g} s") from None
        except OSError as exc:
            raise CtlError(f"cannot reach {where}: {exc.strerror or exc}") from None
        try:
            sock.sendall(line)
            reply = _read_line(sock)
        except TimeoutError:
            raise CtlError(f"{where} did not answer {command!r} within {timeout_s:g} s") from None
        except OSError as exc:
            raise CtlError(f"lost connection to {where}: {exc.strerror or exc}") from None
    if not reply:
        raise CtlError(f"{where} closed the connection without answering {command!r}")
    try:
        response = json.loads(reply)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CtlError(f"{where} sent a reply that is not JSON ({exc})") from None
    if not isinstance(response, dict) or "ok" not in response:
        raise CtlError(f"{where} sent an unexpected reply: {reply[:200]!r}")
    if not response["ok"]:
        raise CtlError(str(response.get("error") or "the command failed (no reason given)"))
    return response.get("result")


def _read_line(sock: socket.socket) -> bytes:
    """Read up to the first newline (returned without it); b"" if the peer closed first."""
    received = bytearray()
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            # A reply cut short by the server closing is incomplete: treat as no reply.
            return b""
        received += chunk
        newline = received.find(b"\n")
        if newline >= 0:
            return bytes(received[:newline])
        if len(received) > MAX_REPLY_BYTES:
            raise CtlError(f"reply from wsd exceeds {MAX_REPLY_BYTES} bytes")


# -- entry point ----------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    """Run `wsd ctl` with `argv` (the arguments after `ctl`); return the process exit status."""
    parser = build_parser()
    try:
        options = parser.parse_args(argv)
    except SystemExit as exc:
        # argparse exits on --help (0) and usage errors (2); callers want a status, not an exit.
        return exc.code if isinstance(exc.code, int) else 2
    command = COMMANDS[options.command]
    args = {key: value for key, value in vars(options).items() if key not in _GLOBAL_DESTS}
    try:
        result = request(options.admin_socket, options.command, args, command.timeout_s)
    except CtlError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    if options.json:
        print(json.dumps(result))
    else:
        print(command.render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
