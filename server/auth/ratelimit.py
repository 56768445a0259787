"""Per-connection rate limit: a token bucket, and the cut-off for a client that floods.

Every request a client sends (`sub` and resumes included, `auth`, `pub`, ...) costs one token. The
bucket holds at most 2R tokens and refills at R per second (`--client-rate R`, default 100), so a
client may burst 2R requests and then keep R per second; a request that finds no token is refused
(`err` code `rate_limited`), and the connection stays open.

A client that sends more than 10x the rate for 5 seconds is closed (1008): refusing it costs us
almost as much as serving it. Time is cut into one-second windows; a window in which the client
sent more than 10R requests is "hot", and the connection is closed the moment a fifth consecutive
window turns hot. Only real floods qualify (more than 10R requests in each of five seconds in a
row), never a burst, however large, followed by a pause.

The clock is passed in (seconds, any monotonic source such as `loop.time()`), so this is tested
without sleeping. State per connection is one small object of five numbers (`RateState`); the
`RateLimiter` holds the settings and is shared by every connection of a worker.
"""

from __future__ import annotations

import enum

from wsd.server.auth import RATE_LIMITED
from wsd.server.auth.replies import Refusal

DEFAULT_CLIENT_RATE = 100.0
BURST_FACTOR = 2.0  # bucket size, in seconds of rate
FLOOD_FACTOR = 10.0  # a client above this multiple of the rate...
FLOOD_SECONDS = 5  # ...in this many consecutive one-second windows is closed

FLOOD_CLOSE_REASON = "too many requests"  # with close code 1008


class Verdict(enum.IntEnum):
    ALLOW = 0
    REFUSE = 1  # `err` code `rate_limited`
    CLOSE = 2  # close 1008: flooding


class RateState:
    """One connection's bucket and flood counters (five numbers; 200k of these per box)."""

    __slots__ = ("tokens", "last", "window_start", "window_count", "hot_windows")

    def __init__(self, now: float, burst: float):
        self.tokens = burst
        self.last = now
        self.window_start = now  # the current one-second window
        self.window_count = 0  # requests in it so far
        self.hot_windows = 0  # consecutive hot windows just before it


class RateLimiter:
    """The policy; `check(state, now)` for each request. rate 0 turns limiting off."""

    __slots__ = ("rate", "burst", "hot_threshold", "refusal")

    def __init__(self, rate: float = DEFAULT_CLIENT_RATE):
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate >= 0 or rate == float("inf"):
            raise ValueError(f"--client-rate must be a number of requests per second >= 0 (0: no limit), got {rate!r}")
        self.rate = float(rate)
        self.burst = BURST_FACTOR * self.rate
        # A one-second window with more requests than this is hot.
        self.hot_threshold = FLOOD_FACTOR * self.rate
        # The `err` reply to a request over the rate (code `rate_limited`).
        self.refusal = Refusal(RATE_LIMITED, f"over {self.rate:g} requests per second; slow down")

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def new_state(self, now: float) -> RateState:
        return RateState(now, self.burst)

    def check(self, state: RateState, now: float) -> Verdict:
        """Account one request at `now`; say whether to serve it, refuse it or close the connection."""
        if self.rate == 0:
            return Verdict.ALLOW
        # The flood check counts every request, refused ones too: a refused flood is still a flood.
        elapsed = now - state.window_start
        if elapsed >= 1.0:
            if elapsed < 2.0:  # the window that just ended was the one before this
                hot = state.window_count > self.hot_threshold
                state.hot_windows = state.hot_windows + 1 if hot else 0
                state.window_start += 1.0
            else:  # at least one whole window went by without a request
                state.hot_windows = 0
                state.window_start = now
            state.window_count = 0
        state.window_count += 1
        if state.window_count > self.hot_threshold and state.hot_windows >= FLOOD_SECONDS - 1:
            return Verdict.CLOSE
        # The bucket.
        if now > state.last:
            state.tokens = min(self.burst, state.tokens + (now - state.last) * self.rate)
            state.last = now
        if state.tokens >= 1.0:
            state.tokens -= 1.0
            return Verdict.ALLOW
        return Verdict.REFUSE
