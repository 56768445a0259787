"""The bus engine's cost per message without the kernel: two engines of one host (two roles) over
real segments in one process, no sockets, no event loop.

Workloads (`--workload`):
  * publish-new: every publish to a channel never seen (half sequenced by the publishing engine,
    half sent as a request to the other), the table big enough never to fill;
  * publish-existing: the same over 1,000 channels;
  * publish-full: new channels into a 4,096-slot table kept full, so each publish forgets one;
  * deliver: one engine publishes over 10 channels, the other tracks one of them and reads all.

Prints the CPU time per message. Under valgrind it gives a deterministic figure: instructions per
message are the difference between two runs of different lengths divided by the extra messages:

    for n in 1 20001; do valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python -m bench.bus_engine --workload publish-new --messages $n 2>&1 | grep Collected; done
    # (second - first) / 20000 = instructions per publish
"""

from __future__ import annotations

import argparse
import os
import time

from wsd.server.bus.engine import BusEngine
from wsd.server.bus.segment import Segment, SegmentLayout


def engines(table_slots: int, deliver) -> tuple[BusEngine, BusEngine, list[Segment]]:
    layout = SegmentLayout(1 << 24, table_slots)
    secret = os.urandom(32)
    segments = [Segment.create(slot, 2, 77, layout, secret) for slot in range(4)]

    def start(slot: int, on_deliver) -> BusEngine:
        mapped = [Segment.attach(os.dup(segment.fd)) for segment in segments]
        return BusEngine(slot, mapped, on_deliver, lambda *a: None, lambda _slot: None, role=slot)

    return start(0, lambda *a: None), start(1, deliver), segments


def run(workload: str, messages: int) -> float:
    delivered = [0]
    table_slots = 4096 if workload == "publish-full" else 1 << 18
    first, second, segments = engines(table_slots, lambda *a: delivered.__setitem__(0, delivered[0] + 1))
    try:
        if workload == "deliver":
            mine = [name for name in (f"c{n}" for n in range(200)) if first.publish(name, b"0")[0]][:10]
            second.subscribe(mine[0])
            names = [mine[n % 10] for n in range(messages)]
            publishers = [first] * messages
        else:
            if workload == "publish-full":
                for n in range(8192):  # fill both tables first
                    (first, second)[n % 2].publish(f"fill{n}", b"0")
                first.poll(), second.poll()
            if workload == "publish-existing":
                names = [f"user:{n % 1000}" for n in range(messages)]
            else:
                names = [f"user:{n}" for n in range(messages)]
            publishers = [(first, second)[n % 2] for n in range(messages)]
        started = time.thread_time()
        for n, (engine, name) in enumerate(zip(publishers, names, strict=True)):
            engine.publish(name, b'{"n":1}')
            if n % 500 == 499:
                first.poll()
                second.poll()
        first.poll()
        second.poll()
        return (time.thread_time() - started) / max(messages, 1)
    finally:
        for segment in segments:
            segment.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=("publish-new", "publish-existing", "publish-full", "deliver"),
                        default="publish-new")  # fmt: skip
    parser.add_argument("--messages", type=int, default=100_000)
    args = parser.parse_args()
    per_message = run(args.workload, args.messages)
    print(f"{args.workload}: {per_message * 1e6:.2f} µs CPU per message ({args.messages} messages)")


if __name__ == "__main__":
    main()
