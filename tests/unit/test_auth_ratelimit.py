"""Unit tests of wsd.server.auth.ratelimit, driven by a clock passed in (no sleeping)."""

from __future__ import annotations

import sys

import pytest

from wsd.server.auth.ratelimit import DEFAULT_CLIENT_RATE, FLOOD_CLOSE_REASON, RateLimiter, RateState, Verdict


def send(
    limiter: RateLimiter, state: RateState, start: float, rate: float, seconds: float
) -> list[tuple[float, Verdict]]:
    """Requests at a steady `rate` per second from `start` for `seconds`; stops at the first CLOSE."""
    verdicts = []
    count = int(rate * seconds)
    for i in range(count):
        now = start + i / rate
        verdict = limiter.check(state, now)
        verdicts.append((now, verdict))
        if verdict is Verdict.CLOSE:
            break
    return verdicts


def test_default_rate_is_100_with_a_burst_of_200():
    limiter = RateLimiter()
    assert limiter.rate == DEFAULT_CLIENT_RATE == 100
    state = limiter.new_state(0.0)
    verdicts = [limiter.check(state, 0.0) for _ in range(201)]
    assert verdicts[:200] == [Verdict.ALLOW] * 200
    assert verdicts[200] is Verdict.REFUSE


def test_bucket_refills_at_the_rate():
    limiter = RateLimiter(10)
    state = limiter.new_state(0.0)
    for _ in range(20):
        assert limiter.check(state, 0.0) is Verdict.ALLOW
    assert limiter.check(state, 0.0) is Verdict.REFUSE
    assert limiter.check(state, 0.05) is Verdict.REFUSE  # half a token
    assert limiter.check(state, 0.1) is Verdict.ALLOW  # one token, less the refused ones' nothing
    assert limiter.check(state, 0.1) is Verdict.REFUSE
    # A long pause refills to the burst, not beyond.
    allowed = sum(limiter.check(state, 100.0) is Verdict.ALLOW for _ in range(30))
    assert allowed == 20


def test_steady_rate_is_served():
    limiter = RateLimiter(100)
    state = limiter.new_state(0.0)
    verdicts = send(limiter, state, 0.0, 100, 60)
    assert all(v is Verdict.ALLOW for _, v in verdicts)


def test_over_the_rate_is_refused_but_not_closed():
    limiter = RateLimiter(100)
    state = limiter.new_state(0.0)
    verdicts = send(limiter, state, 0.0, 900, 60)  # 9x the rate for a minute: refused, never closed
    assert Verdict.CLOSE not in {v for _, v in verdicts}
    allowed = sum(v is Verdict.ALLOW for _, v in verdicts)
    assert 100 * 60 <= allowed <= 100 * 60 + 200 + 1  # the rate, plus the burst


def test_more_than_ten_times_the_rate_for_five_seconds_closes():
    limiter = RateLimiter(100)
    state = limiter.new_state(0.0)
    verdicts = send(limiter, state, 0.0, 1100, 60)
    closed_at, verdict = verdicts[-1]
    assert verdict is Verdict.CLOSE
    # Over 1000 requests in each of five one-second windows: the fifth turns hot at 4 + 1001/1100 s.
    assert 4.9 <= closed_at <= 4.92
    assert FLOOD_CLOSE_REASON == "too many requests"


def test_a_flood_starting_mid_window_is_caught_as_soon():
    limiter = RateLimiter(100)
    state = limiter.new_state(0.0)
    send(limiter, state, 0.0, 1, 3.7)  # quiet, then the flood begins 3.7 s into the first window
    verdicts = send(limiter, state, 3.7, 1100, 60)
    closed_at, verdict = verdicts[-1]
    assert verdict is Verdict.CLOSE
    # The partial window (0.3 s of flood) is not hot; five whole ones are.
    assert 8.9 <= closed_at <= 8.92


def test_a_heavier_flood_is_closed_in_its_fifth_second_too():
    limiter = RateLimiter(100)
    state = limiter.new_state(0.0)
    closed_at, verdict = send(limiter, state, 0.0, 20_000, 10)[-1]
    assert verdict is Verdict.CLOSE and 4.0 <= closed_at < 4.1


def test_a_flood_broken_by_a_quiet_second_starts_over():
    limiter = RateLimiter(100)
    state = limiter.new_state(0.0)
    now = 0.0
    for _ in range(10):  # 4.5 s at 20x, then 1.5 s of silence, ten times over
        assert all(v is not Verdict.CLOSE for _, v in send(limiter, state, now, 2000, 4.5))
        now += 6.0


def test_refused_requests_count_towards_the_flood():
    limiter = RateLimiter(10)
    state = limiter.new_state(0.0)
    verdicts = send(limiter, state, 0.0, 200, 10)  # 20x: nearly all refused, then closed
    assert verdicts[-1][1] is Verdict.CLOSE
    assert sum(v is Verdict.REFUSE for _, v in verdicts) > 400


def test_bursts_separated_by_quiet_never_close():
    limiter = RateLimiter(100)
    state = limiter.new_state(0.0)
    now = 0.0
    for _ in range(20):  # 4000 requests at once (20x the burst), every 6 s
        for _ in range(4000):
            assert limiter.check(state, now) is not Verdict.CLOSE
        now += 6.0


def test_rate_zero_turns_limiting_off():
    limiter = RateLimiter(0)
    assert not limiter.enabled
    state = limiter.new_state(0.0)
    assert all(limiter.check(state, 0.0) is Verdict.ALLOW for _ in range(100_000))


@pytest.mark.parametrize("rate", [-1, float("nan"), float("inf"), "100", True, None])
def test_invalid_rates_are_refused(rate):
    with pytest.raises(ValueError, match="--client-rate must be a number"):
        RateLimiter(rate)


def test_refusal_reply():
    refusal = RateLimiter(50).refusal
    assert refusal.code == "rate_limited"
    assert (
        refusal.encode(7) == b'{"op":"err","id":7,"code":"rate_limited","msg":"over 50 requests per second; slow down"}'
    )


def test_per_connection_state_is_small():
    state = RateLimiter().new_state(1.0)
    assert not hasattr(state, "__dict__")
    assert sys.getsizeof(state) <= 88
