"""Chaos under load (issue 9, "Proof"): resuming clients on W workers, channels published at a steady
rate through the API, and a random worker SIGKILLed every few seconds; then the verdict.

    python -m harness.chaos                       # 10,000 clients, 4 workers, 20 channels at 50 msg/s,
                                                  # a kill every 5 s for 60 s (make chaos)
    python -m harness.chaos --clients 1000 --seconds 20 --kill-every 4   # the scale of tests/test_chaos.py

Every worker holds a sequencing role (role r sequences a share of the channels), so every kill kills a
sequencing worker, and the API connections and clients it had. One worker, chosen at random, is spared
(--spare-workers), so that some clients see the whole run on one connection. The clients (harness.loadgen's resuming
mode, spread over 127.0.0.x) reconnect and resume with `since`; the publisher (one keep-alive
connection per channel, each message's data `{"seq": k, ...}`, k counting per channel) reconnects too
and never retries a message whose outcome it did not learn.

The run passes only if: every client on a worker that survived saw every message once, in order; every
client of a killed worker resumed with no gap and no duplicate (`recovered: true` every time); every
client ends at each channel's final offset; no offset was delivered with two messages and no message
got two offsets; every offset the API answered carries, at every client, the message it was answered
for; the offsets the API answered on a channel are distinct and follow the publish order; and no
offset from 1 to the final one went undelivered.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
from websockets.sync.client import connect

from harness.loadgen import LoadGenerator, merge_resume
from harness.publisher import ApiStatusError, Publisher
from harness.resuming import ResumePlan
from harness.wsd_process import WsdProcess


@dataclass(frozen=True)
class ChaosPlan:
    clients: int = 10_000
    workers: int = 4
    channels: int = 20
    rate: float = 50.0  # messages per second over all channels
    seconds: float = 60.0  # how long workers are killed
    kill_every: float = 5.0
    processes: int = 4  # load-generator processes
    channels_per_client: int = 1
    payload_bytes: int = 100
    catch_up_timeout: float = 60.0
    # Workers never killed (chosen at random at the start), so that some clients live through the
    # whole run on one connection: with a dozen kills over 4 workers, every worker is hit otherwise.
    spare_workers: int = 1
    seed: int | None = None
    wsd_flags: tuple[str, ...] = ()


@dataclass
class Outcome:
    """One publish: its offset, or why the publisher does not know it."""

    seq: int
    offset: int | None
    status: int | None = None  # the API's status when it was not 200
    error: str | None = None  # why no answer came (reset, timeout)


@dataclass
class Kill:
    at_s: float
    slot: int
    pid: int
    role: int | None
    connections: int
    cpu_percent: dict[int, float] = field(default_factory=dict)  # every worker's, by slot, at the kill


class ChannelPublisher(threading.Thread):
    """Publishes to one channel at `rate` per second, one request at a time, until stopped."""

    def __init__(self, api_port: int, channel: str, rate: float, payload_bytes: int, stop: threading.Event) -> None:
        super().__init__(daemon=True, name=f"publish-{channel}")
        self.api_port, self.channel, self.interval, self.payload_bytes = api_port, channel, 1.0 / rate, payload_bytes
        self.stop_event = stop
        self.outcomes: list[Outcome] = []

    def _publisher(self) -> Publisher:
        # 10 s: longer than the 5 s the API waits for a channel's owner before it answers 503.
        return Publisher(self.api_port, self.payload_bytes, self.channel, timeout=10)

    def run(self) -> None:
        publisher = self._publisher()
        seq = 0
        next_at = time.monotonic()
        while not self.stop_event.is_set():
            next_at += self.interval
            delay = next_at - time.monotonic()
            if delay > 0:
                self.stop_event.wait(delay)
            seq += 1
            try:
                self.outcomes.append(Outcome(seq, publisher.publish_one(seq)))
            except ApiStatusError as error:
                self.outcomes.append(Outcome(seq, None, status=error.status, error=str(error)[:200]))
            except (OSError, TimeoutError, ValueError) as error:  # reset by a killed worker, no answer
                self.outcomes.append(Outcome(seq, None, error=f"{type(error).__name__}: {error}"[:200]))
                publisher.connection.close()
                publisher = self._publisher()


def channel_offsets(url: str, channels: list[str]) -> dict[str, int]:
    """Each channel's current offset, as a fresh `sub` reports it."""
    with connect(url, open_timeout=10) as ws:
        for request_id, channel in enumerate(channels, 1):
            ws.send(orjson.dumps({"op": "sub", "ch": channel, "id": request_id}).decode())
        offsets: dict[str, int] = {}
        while len(offsets) < len(channels):
            reply = orjson.loads(ws.recv(timeout=10))
            if reply.get("op") == "ok":
                offsets[channels[reply["id"] - 1]] = reply["off"]
    return offsets


def wait_all_running(wsd: WsdProcess, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    status: dict = {}
    while time.monotonic() < deadline:
        try:
            status = wsd.status()
        except (RuntimeError, OSError, ValueError):
            time.sleep(0.2)
            continue
        workers = status["workers"]
        if all(w["pid"] and w["state"] == "running" and w["accepting"] and w["role"] is not None for w in workers):
            return status
        time.sleep(0.2)
    raise TimeoutError(f"not every worker is running again after {timeout}s: {status}")


def check_publisher(
    published: dict[str, list[Outcome]], ledger: dict[str, dict[int, Any]], final: dict[str, int]
) -> dict[str, Any]:
    """What the API told the publisher against what the clients were delivered (`ledger`: channel ->
    offset -> seq, merged over every client)."""
    offset_used_twice, out_of_order, mismatches, refused_delivered, holes = [], [], [], [], []
    unknown = unknown_delivered = answered = 0
    for channel, outcomes in published.items():
        delivered = ledger.get(channel, {})
        seq_at = {seq: offset for offset, seq in delivered.items()}
        given: dict[int, int] = {}
        last = 0
        for outcome in outcomes:
            if outcome.offset is not None:
                answered += 1
                if outcome.offset in given:
                    offset_used_twice.append((channel, outcome.offset, given[outcome.offset], outcome.seq))
                given[outcome.offset] = outcome.seq
                if outcome.offset <= last:
                    out_of_order.append((channel, outcome.seq, outcome.offset, last))
                last = max(last, outcome.offset)
                if delivered.get(outcome.offset) != outcome.seq:
                    mismatches.append((channel, outcome.seq, outcome.offset, delivered.get(outcome.offset)))
            elif outcome.status is not None and 400 <= outcome.status < 500:
                if outcome.seq in seq_at:
                    refused_delivered.append((channel, outcome.seq, outcome.status, seq_at[outcome.seq]))
            else:
                unknown += 1
                unknown_delivered += outcome.seq in seq_at
        missing = [offset for offset in range(1, final.get(channel, 0) + 1) if offset not in delivered]
        if missing:
            holes.append((channel, missing[:10], len(missing)))
        if last > final.get(channel, 0):
            holes.append((channel, f"the API answered offset {last}, past the final offset {final.get(channel)}"))
    return {
        "published": sum(len(o) for o in published.values()),
        "answered": answered,
        "unknown_outcome": unknown,
        "unknown_outcome_delivered": unknown_delivered,
        "refused": sum(o.status is not None and 400 <= o.status < 500 for v in published.values() for o in v),
        "offset_used_twice": offset_used_twice[:20],
        "out_of_order": out_of_order[:20],
        "api_offset_not_delivered_as_answered": mismatches[:20],
        "api_offset_mismatches": len(mismatches),
        "refused_but_delivered": refused_delivered[:20],
        "undelivered_offsets": holes[:20],
    }


@dataclass
class ChaosResult:
    plan: dict
    passed: bool
    failures: list[str]
    kills: list[dict]
    connect: dict
    clients: dict
    publisher: dict
    final_offsets: dict[str, int]
    seconds: dict[str, float] = field(default_factory=dict)
    log_tail: str = ""


def verdict(clients: dict, publisher: dict, kills: list[Kill], plan: ChaosPlan) -> list[str]:
    failures = []
    for key in ("duplicates", "gaps", "not_recovered", "behind_clients", "never_connected", "error_clients"):
        if clients[key]:
            failures.append(f"{key}: {clients[key]}")
    if clients["surviving_clients_complete"] != clients["surviving_clients"]:
        failures.append(
            f"clients never disconnected but incomplete: "
            f"{clients['surviving_clients'] - clients['surviving_clients_complete']}"
        )
    if clients["conflicts"]:
        failures.append(f"offsets delivered with two messages: {clients['conflicts'][:5]}")
    if clients["sequenced_twice"]:
        failures.append(
            f"messages delivered at two offsets (channel, seq, first, second): {len(clients['sequenced_twice'])}, "
            f"e.g. {clients['sequenced_twice'][:5]}"
        )
    for key in ("offset_used_twice", "out_of_order", "refused_but_delivered", "undelivered_offsets"):
        if publisher[key]:
            failures.append(f"{key}: {publisher[key][:5]}")
    if publisher["api_offset_mismatches"]:
        failures.append(
            f"API offsets not delivered with their message: {publisher['api_offset_mismatches']}, "
            f"e.g. {publisher['api_offset_not_delivered_as_answered'][:5]}"
        )
    expected_kills = int(plan.seconds // plan.kill_every)
    if len(kills) < expected_kills:
        failures.append(f"only {len(kills)} of {expected_kills} kills happened")
    return failures


def run_chaos(plan: ChaosPlan, workdir: Path, log=print) -> ChaosResult:
    rng = random.Random(plan.seed)
    started = time.monotonic()
    tag = f"chaos{os.getpid()}x{rng.randrange(1 << 30):x}"
    channels = [f"{tag}-{n}" for n in range(plan.channels)]
    wsd = WsdProcess(workdir, workers=plan.workers, flags=list(plan.wsd_flags))
    load: LoadGenerator | None = None
    stop = threading.Event()
    publishers: list[ChannelPublisher] = []
    kills: list[Kill] = []
    timings: dict[str, float] = {}
    try:
        wsd.start()
        load = LoadGenerator(
            [wsd.url],
            processes=plan.processes,
            subscribers=plan.clients,
            resume=ResumePlan(channels, plan.channels_per_client),
        )
        connected = load.connect_all()
        timings["connect"] = connected["connect_seconds"]
        log(f"chaos: {connected['subscribers']} clients connected in {connected['connect_seconds']:.1f} s, "
            f"per worker {connected['per_worker']}")  # fmt: skip
        publishers = [
            ChannelPublisher(wsd.api_port, channel, plan.rate / plan.channels, plan.payload_bytes, stop)
            for channel in channels
        ]
        for publisher in publishers:
            publisher.start()
        spared = set(rng.sample(range(plan.workers), min(plan.spare_workers, plan.workers - 1)))
        chaos_started = time.monotonic()
        next_kill = chaos_started + plan.kill_every
        while next_kill <= chaos_started + plan.seconds + 0.01:
            time.sleep(max(0.0, next_kill - time.monotonic()))
            kills.append(kill_one(wsd, rng, time.monotonic() - chaos_started, spared))
            log(f"chaos: t={kills[-1].at_s:5.1f} s SIGKILL worker {kills[-1].slot} (pid {kills[-1].pid}, "
                f"role {kills[-1].role}, {kills[-1].connections} connections)")  # fmt: skip
            next_kill += plan.kill_every
        wait_all_running(wsd, 60)
        time.sleep(2.0)  # a last stretch of publishing with every worker up
        stop.set()
        for publisher in publishers:
            publisher.join(30)
        timings["chaos"] = time.monotonic() - chaos_started
        # The final offsets, once nothing is in flight any more (a request the publisher gave up on may
        # still be sequenced by an owner that just came back): two equal readings a second apart.
        final = channel_offsets(wsd.url, channels)
        for _ in range(10):
            time.sleep(1.0)
            again = channel_offsets(wsd.url, channels)
            if again == final:
                break
            final = again
        reports = load.finish(final, plan.catch_up_timeout)
        clients = merge_resume(reports)
        published = {p.channel: p.outcomes for p in publishers}
        publisher_check = check_publisher(published, clients.pop("ledger"), final)
        failures = verdict(clients, publisher_check, kills, plan)
        timings["total"] = time.monotonic() - started
        return ChaosResult(
            plan=asdict(plan),
            passed=not failures,
            failures=failures,
            kills=[asdict(k) for k in kills],
            connect=connected,
            clients=clients,
            publisher=publisher_check,
            final_offsets=final,
            seconds=timings,
            log_tail=wsd.read_log()[-3000:] if failures else "",
        )
    finally:
        stop.set()
        if load is not None:
            load.close()
        wsd.kill()


def kill_one(wsd: WsdProcess, rng: random.Random, at_s: float, spared: set[int]) -> Kill:
    """SIGKILL one running worker, chosen at random (every worker holds a sequencing role)."""
    for _ in range(100):
        try:
            every = wsd.status()["workers"]
        except (RuntimeError, OSError, ValueError):
            every = []
        workers = [w for w in every if w["pid"] and w["state"] == "running" and w["slot"] not in spared]
        if workers:
            victim = rng.choice(workers)
            os.kill(victim["pid"], signal.SIGKILL)
            cpu = {w["slot"]: w.get("cpu_percent", 0.0) for w in every}
            connections = victim.get("connections", 0)
            return Kill(round(at_s, 2), victim["slot"], victim["pid"], victim["role"], connections, cpu)
        time.sleep(0.1)
    raise RuntimeError("no running worker to kill for 10 s")


def describe(result: ChaosResult) -> str:
    c, p = result.clients, result.publisher
    lines = [
        f"chaos {'PASSED' if result.passed else 'FAILED'}: {c['clients']} clients, "
        f"{result.plan['workers']} workers, {result.plan['channels']} channels at {result.plan['rate']:g} msg/s, "
        f"{len(result.kills)} SIGKILLs in {result.plan['seconds']:g} s",
        f"  kills (slot/role): {[(k['slot'], k['role']) for k in result.kills]}, "
        f"clients on the killed workers {sum(k['connections'] for k in result.kills)}",
        f"  messages: {p['published']} published, {p['answered']} answered with an offset, "
        f"{p['unknown_outcome']} without an answer ({p['unknown_outcome_delivered']} of those delivered), "
        f"{p['refused']} refused; final offsets sum {sum(result.final_offsets.values())}",
        f"  clients: {c['surviving_clients']} never disconnected ({c['surviving_clients_complete']} complete), "
        f"{c['disconnected_clients']} disconnected, {c['reconnected_clients']} reconnected "
        f"({c['connects'] - c['clients']} reconnects, {c['resumes']} resumes "
        f"recovered:true, {c['not_recovered']} recovered:false), close codes {c['close_codes']}",
        f"  duplicates {c['duplicates']}, gaps {c['gaps']}, clients behind {c['behind_clients']}, "
        f"offset conflicts {len(c['conflicts'])}, messages at two offsets {len(c['sequenced_twice'])}, "
        f"API offsets used twice {len(p['offset_used_twice'])}, API offsets not delivered as answered "
        f"{p['api_offset_mismatches']}, undelivered offsets {len(p['undelivered_offsets'])}",
        f"  time: {result.seconds}; load generator loops up to {c['loop_lag_max_s']:.1f} s late "
        f"(the box's load shows here), box load average {os.getloadavg()[0]:.1f}",
    ]
    lines += [f"  FAILURE {failure}" for failure in result.failures]
    if result.failures and c["problems"]:
        lines.append(f"  first problem clients: {json.dumps(c['problems'][:3])[:1500]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = ChaosPlan()
    parser.add_argument("--clients", type=int, default=defaults.clients)
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--channels", type=int, default=defaults.channels)
    parser.add_argument("--rate", type=float, default=defaults.rate, help="messages per second over all channels")
    parser.add_argument("--seconds", type=float, default=defaults.seconds, help="how long workers are killed")
    parser.add_argument("--kill-every", type=float, default=defaults.kill_every)
    parser.add_argument("--processes", type=int, default=defaults.processes, help="load-generator processes")
    parser.add_argument("--channels-per-client", type=int, default=defaults.channels_per_client)
    parser.add_argument("--spare-workers", type=int, default=defaults.spare_workers, help="workers never killed")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args(argv)
    plan = ChaosPlan(
        clients=args.clients, workers=args.workers, channels=args.channels, rate=args.rate, seconds=args.seconds,
        kill_every=args.kill_every, processes=args.processes, channels_per_client=args.channels_per_client,
        spare_workers=args.spare_workers, seed=args.seed,
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="wsd-chaos-") as workdir:
        result = run_chaos(plan, Path(workdir))
    print(describe(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(asdict(result), indent=2, default=str))
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
