"""The slow-reader policy and the keepalive sweep, driven by a fake clock (no sockets, no sleeping)."""

from __future__ import annotations

from wsd.server.node.slow_readers import HARD_LIMIT_FACTOR, SlowReaders
from wsd.server.worker.keepalive import Keepalive


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Raw:
    def __init__(self, buffered: int = 0) -> None:
        self.buffered = buffered
        self.closing = False

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closing


class Subscriber:
    def __init__(self, buffered: int = 0) -> None:
        self.raw = Raw(buffered)


def test_a_burst_over_the_limit_that_drains_is_not_cut_off() -> None:
    clock, cut = Clock(), []
    policy = SlowReaders(1000, 5.0, cut.append, clock)
    reader = Subscriber(1500)
    policy.over_limit(reader)
    clock.now += 1
    reader.raw.buffered = 200  # the kernel took it
    policy.sweep()
    clock.now += 10
    policy.sweep()
    assert cut == [] and policy.over_since == {}


def test_a_reader_over_the_limit_for_the_timeout_is_cut_off_once() -> None:
    clock, cut = Clock(), []
    policy = SlowReaders(1000, 5.0, cut.append, clock)
    reader = Subscriber(1500)
    policy.over_limit(reader)
    clock.now += 3
    policy.over_limit(reader)  # seen again: the deadline is from the first time
    policy.sweep()
    assert cut == []
    clock.now += 2
    policy.sweep()
    policy.sweep()
    assert cut == [reader]


def test_a_queue_over_eight_times_the_limit_is_cut_off_at_once() -> None:
    cut = []
    policy = SlowReaders(1000, 5.0, cut.append, Clock())
    hog = Subscriber(HARD_LIMIT_FACTOR * 1000 + 1)
    policy.over_limit(hog)
    assert cut == [hog] and policy.over_since == {}


class Session:
    def __init__(self, answers: bool) -> None:
        self.answers = answers
        self.pings = 0
        self.heard = True
        self.closed: tuple | None = None

    def send_keepalive_ping(self) -> None:
        self.pings += 1
        self.heard = self.answers  # an answering peer's pong arrives before the check

    def keepalive_expired(self) -> bool:
        return not self.heard and self.closed is None

    def close(self, code: int, reason: str, abort: bool) -> None:
        self.closed = (code, reason, abort)


def test_keepalive_pings_everyone_once_per_interval_spread_out_and_closes_the_silent() -> None:
    clock = Clock()
    sessions = [Session(answers=n % 10 != 0) for n in range(100)]
    keepalive = Keepalive(lambda: sessions, interval_s=10.0, timeout_s=2.0, clock=clock)
    clock.now += 10.0  # the first round starts an interval after the worker
    pinged_by_tick = []
    for _ in range(20):  # one interval in ticks of 0.5 s
        keepalive.tick()
        pinged_by_tick.append(sum(s.pings for s in sessions))
        clock.now += 0.5
    assert pinged_by_tick[0] < 20, "pings are spread over the interval, not sent at once"
    assert all(s.pings == 1 for s in sessions), "everyone is pinged once in an interval"
    for _ in range(5):  # the checks of the last pings of the round come timeout_s after them
        keepalive.tick()
        clock.now += 0.5
    silent = [s for s in sessions if not s.answers]
    assert all(s.closed == (1011, "ping timeout", True) for s in silent)
    assert all(s.closed is None for s in sessions if s.answers)
    assert keepalive.timeouts == len(silent) == 10


def test_a_session_closes_only_after_its_timeout_from_its_own_ping() -> None:
    clock = Clock()
    silent = Session(answers=False)
    keepalive = Keepalive(lambda: [silent], interval_s=10.0, timeout_s=2.0, clock=clock)
    clock.now += 10.0
    keepalive.tick()
    assert silent.pings == 1
    clock.now += 1.5
    keepalive.tick()
    assert silent.closed is None
    clock.now += 1.0
    keepalive.tick()
    assert silent.closed is not None


def test_connections_of_a_just_started_worker_are_not_pinged_before_an_interval() -> None:
    # Clients that connect before the worker's first tick (0.5 s in) were pinged at once, and a
    # client that answers no ping (a raw reader in a test, a lazy client) was closed 10 s in.
    clock = Clock()
    early = Session(answers=False)
    keepalive = Keepalive(lambda: [early], interval_s=600.0, timeout_s=10.0, clock=clock)
    for _ in range(100):  # 50 s of ticks
        clock.now += 0.5
        keepalive.tick()
    assert early.pings == 0 and early.closed is None
    clock.now += 550.0
    keepalive.tick()
    assert early.pings == 1


def test_a_round_with_nobody_does_not_start_the_next_one_early() -> None:
    clock = Clock()
    sessions: list[Session] = []
    keepalive = Keepalive(lambda: sessions, interval_s=10.0, timeout_s=2.0, clock=clock)
    keepalive.tick()  # a round of nobody
    newcomer = Session(answers=False)
    sessions.append(newcomer)
    for _ in range(10):
        clock.now += 0.5
        keepalive.tick()
    assert newcomer.pings == 0 and newcomer.closed is None  # its first ping comes with the next round
    clock.now += 5.0
    keepalive.tick()
    assert newcomer.pings == 1


class LatePonger(Session):
    """A live peer whose pong is still unread in the socket when a late tick runs (the loop stalled)."""

    def send_keepalive_ping(self) -> None:
        self.pings += 1
        self.heard = False


def test_a_tick_after_a_stalled_loop_checks_nobody_until_the_loop_has_read() -> None:
    # Timers run before the loop reads its sockets: after a 12 s stall the pong of a ping sent
    # just before it is still unread, and the peer was closed as silent.
    clock = Clock()
    live, silent = LatePonger(answers=True), Session(answers=False)
    keepalive = Keepalive(lambda: [live, silent], interval_s=2.0, timeout_s=2.0, clock=clock)
    clock.now += 2.0
    keepalive.tick()
    clock.now += 1.0
    keepalive.tick()
    assert live.pings == silent.pings == 1
    clock.now += 12.0  # the loop stalls
    keepalive.tick()
    assert live.closed is None and silent.closed is None
    assert keepalive.deferred_checks == 1
    live.heard = True  # the loop's next read round takes the pong
    clock.now += 0.5
    keepalive.tick()
    assert live.closed is None
    assert silent.closed == (1011, "ping timeout", True)


def test_a_loop_that_stays_slow_still_closes_the_silent() -> None:
    clock = Clock()
    silent = Session(answers=False)
    keepalive = Keepalive(lambda: [silent], interval_s=10.0, timeout_s=2.0, clock=clock)
    clock.now += 10.0
    keepalive.tick()
    for _ in range(3):  # every tick comes 3 s late
        clock.now += 3.0
        keepalive.tick()
    assert silent.closed is not None
