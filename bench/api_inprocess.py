"""The publish API's cost per request without the kernel: its protocol factory driven in one process
by a fake transport, pipelined ``POST /api/publish`` in bursts of 32, a publisher that answers at once.

Prints the CPU time per request (thread time, so other processes on the box count less than in
`bench.api_throughput`). Under valgrind it gives a deterministic figure: instructions per request are
the difference between two runs of different lengths divided by the extra requests, e.g.

    for n in 50 550; do valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python -m bench.api_inprocess --rounds $n 2>&1 | grep Collected; done
    # (second - first) / (500 * 32) = instructions per request

Works against the API before the sans-I/O split too (``wsd.server.http_api``), to compare the two.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import uvloop

from bench.api_throughput import IMPLEMENTATION, AsyncImmediatePublisher, ImmediatePublisher, publish_request

if IMPLEMENTATION == "wsd.server.api":
    from wsd.server.api import make_api_protocol_factory
else:  # pragma: no cover - only for measuring the code before the split
    from wsd.server.http_api import make_api_protocol_factory  # type: ignore[no-redef]

BURST = 32
RESPONSE_MARK = b'{"offset":'


class CountingTransport:
    """Just enough of an asyncio transport: counts the responses written."""

    def __init__(self) -> None:
        self.responses = 0

    def write(self, data: bytes) -> None:
        self.responses += data.count(RESPONSE_MARK)

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


async def drive(rounds: int) -> float:
    """CPU microseconds per request over `rounds` bursts."""
    publisher = ImmediatePublisher() if IMPLEMENTATION == "wsd.server.api" else AsyncImmediatePublisher()
    protocol = make_api_protocol_factory(publisher)()
    transport = CountingTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    burst = b"".join(publish_request(i, 64) for i in range(BURST))
    started = time.thread_time()
    for _ in range(rounds):
        protocol.data_received(burst)
        while transport.responses < BURST:  # the API before the split answered from a Task
            await asyncio.sleep(0)
        transport.responses = 0
    return (time.thread_time() - started) / rounds / BURST * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3000, help=f"bursts of {BURST} requests")
    args = parser.parse_args()
    print(f"{IMPLEMENTATION}: {uvloop.run(drive(args.rounds)):.2f} µs CPU per request")


if __name__ == "__main__":
    main()
