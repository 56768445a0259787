"""Unit tests of wsd.server.auth.expiry: many deadlines, one timer."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from wsd.server.auth.expiry import ExpiryWheel


def test_nothing_is_due_before_its_deadline_and_everything_within_a_resolution_after():
    wheel = ExpiryWheel(resolution_s=0.25)
    wheel.schedule("a", 10.1)
    wheel.schedule("b", 10.25)
    wheel.schedule("c", 11.0)
    assert wheel.next_due() == 10.25
    assert wheel.pop_due(10.0) == []
    assert wheel.pop_due(10.24) == []
    assert sorted(wheel.pop_due(10.25)) == ["a", "b"]
    assert wheel.pop_due(10.99) == []
    assert wheel.next_due() == 11.0
    assert wheel.pop_due(11.0) == ["c"]
    assert wheel.next_due() is None and len(wheel) == 0


def test_reschedule_moves_the_deadline_and_cancel_forgets():
    wheel = ExpiryWheel()
    wheel.schedule("a", 5.0)
    wheel.schedule("a", 50.0)  # a refreshed token
    wheel.schedule("b", 5.0)
    wheel.cancel("b")  # closed
    wheel.cancel("never-scheduled")
    assert wheel.pop_due(10.0) == []
    assert wheel.next_due() == 50.0
    assert "a" in wheel and "b" not in wheel
    assert wheel.pop_due(50.0) == ["a"]


def test_past_deadlines_are_due_at_once():
    wheel = ExpiryWheel()
    wheel.schedule("late", 1.0)
    assert wheel.pop_due(1000.0) == ["late"]


def test_many_connections():
    wheel = ExpiryWheel()
    rng = random.Random(7)
    deadlines = {i: rng.uniform(0, 3600) for i in range(100_000)}
    for key, deadline in deadlines.items():
        wheel.schedule(key, deadline)
    seen = []
    now = 0.0
    while len(wheel):
        now = wheel.next_due()
        due = wheel.pop_due(now)
        assert all(deadlines[key] <= now < deadlines[key] + 0.25 + 1e-9 for key in due)
        seen.extend(due)
    assert sorted(seen) == list(range(100_000))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from("schedule cancel pop".split()), st.integers(0, 9), st.floats(0, 100, allow_nan=False)
        ),
        max_size=60,
    )
)
def test_agrees_with_a_plain_dict(operations):
    wheel = ExpiryWheel(resolution_s=0.5)
    model: dict[int, float] = {}
    now = 0.0
    for operation, key, value in operations:
        if operation == "schedule":
            wheel.schedule(key, value)
            model[key] = value
        elif operation == "cancel":
            wheel.cancel(key)
            model.pop(key, None)
        else:
            now = max(now, value)
            due = set(wheel.pop_due(now))
            # Due: every deadline at or before now that lies in a bucket that has ended.
            for k in due:
                assert model.pop(k) <= now
            for k, deadline in model.items():
                assert deadline > now - 0.5, (k, deadline, now)
        assert len(wheel) == len(model)
