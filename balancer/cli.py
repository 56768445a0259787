"""`wsd balancer`: run the hash front (`wsd balancer --vip ... --backend ...`) or ask a running one
for its state (`wsd balancer status`). `server/cli.py` dispatches here via `main(argv)`."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys

from wsd.balancer.admin import format_status, request, serve_admin
from wsd.balancer.config import MODES, BalancerConfig, ConfigError, build_config, load_toml
from wsd.balancer.controller import Balancer

log = logging.getLogger("wsd.balancer")


def run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsd balancer",
        description="Hash each TCP connection to a wsd backend: the kernel forwards, this programs it. "
        "Use `wsd balancer status` to query a running balancer.",
    )
    parser.add_argument("--config", help="TOML file with a [balancer] table (flags override it)")
    parser.add_argument("--vip", help="the address clients connect to, IP:PORT")
    parser.add_argument("--backend", dest="backends", action="append", metavar="HOST:PORT",
                        help="a wsd server (repeat for each)")
    parser.add_argument("--mode", choices=MODES, help="ecmp (default): kernel multipath route, DSR; "
                        "nft: nftables DNAT by a Maglev map; proxy: userspace fallback")
    parser.add_argument("--admin-socket", help="Unix socket for `wsd balancer status`")
    parser.add_argument("--table-size", type=int, help="Maglev table size (prime)")
    parser.add_argument("--health-interval", dest="health_interval_s", type=float, help="seconds between checks")
    parser.add_argument("--health-timeout", dest="health_timeout_s", type=float, help="seconds per check")
    parser.add_argument("--fail-after", type=int, help="failed checks in a row before removal (K)")
    parser.add_argument("--rise-after", type=int, help="passed checks in a row before re-adding")
    parser.add_argument("--drain-window", dest="drain_window_s", type=float,
                        help="ecmp: longest a draining backend keeps its buckets, seconds")
    parser.add_argument("--ecmp-buckets", type=int, help="resilient group size (fixed once created)")
    parser.add_argument("--ecmp-idle-timer", dest="ecmp_idle_timer_s", type=int,
                        help="seconds before an idle bucket may migrate to a re-added backend")
    parser.add_argument("--route-key", help="proxy mode L7: hash this query parameter of the handshake")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def status_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="wsd balancer status", description="Show a running balancer's state")
    parser.add_argument("--admin-socket", default=BalancerConfig.admin_socket)
    parser.add_argument("--json", action="store_true", help="print the raw JSON answer")
    arguments = parser.parse_args(argv)
    try:
        answer = request(arguments.admin_socket, "status")
    except OSError as error:
        print(f"wsd balancer status: cannot reach {arguments.admin_socket}: {error.strerror or error}; "
              "is `wsd balancer` running with this --admin-socket?", file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=2) if arguments.json else format_status(answer))
    return 0


def make_data_plane(config: BalancerConfig):
    # Imported lazily: ecmp needs pyroute2, and proxy mode must work on hosts without it.
    if config.mode == "ecmp":
        from wsd.balancer.ecmp import EcmpDataPlane

        return EcmpDataPlane(config)
    if config.mode == "nft":
        from wsd.balancer.nft import NftDataPlane

        return NftDataPlane(config)
    from wsd.balancer.proxy import ProxyDataPlane

    return ProxyDataPlane(config)


async def serve(config: BalancerConfig) -> None:
    data_plane = make_data_plane(config)
    balancer = Balancer(config, data_plane)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signal_number, stop.set)
    await data_plane.start()
    admin = await serve_admin(config.admin_socket, balancer.status)
    log.info("balancing %s over %d backends in %s mode; admin socket %s",
             config.vip, len(config.backends), config.mode, config.admin_socket)
    try:
        await balancer.run(stop)
    finally:
        admin.close()
        # The kernel state is ours: take it down so a stopped balancer leaves no half-served VIP.
        await data_plane.close()
        log.info("stopped; kernel state removed")


def main(argv: list[str]) -> int:
    """Entry point for `wsd balancer ARGS...`."""
    if argv and argv[0] == "status":
        return status_main(argv[1:])
    arguments = run_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if arguments.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    flags = {key: value for key, value in vars(arguments).items() if key not in ("config", "verbose")}
    try:
        config = build_config(load_toml(arguments.config) if arguments.config else {}, flags)
    except ConfigError as error:
        print(f"wsd balancer: {error}", file=sys.stderr)
        return 2
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        runner(serve(config))
    except PermissionError as error:
        print(f"wsd balancer: {error}; {config.mode} mode programs the kernel and must run as root "
              "(or use --mode proxy)", file=sys.stderr)
        return 1
    except Exception as error:  # e.g. nft missing, VIP not local in proxy mode
        print(f"wsd balancer: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0
