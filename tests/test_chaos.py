"""Chaos under load, at the scale of the test suite (issue 9, "Proof"): 1,000 resuming clients on 4
workers, 20 channels at 50 msg/s in all, a random worker SIGKILLed every 4 s for 20 s. Every client ends
with every message once, in order; every offset the API gave carries its message; no offset is used
twice. `make chaos` runs the full scale (10,000 clients, a kill every 5 s for 60 s): harness/chaos.py.
"""

from __future__ import annotations

import pytest

from harness.chaos import ChaosPlan, describe, run_chaos


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_sigkill_of_random_workers_under_load_loses_and_repeats_nothing(tmp_path):
    plan = ChaosPlan(clients=1000, workers=4, channels=20, rate=50, seconds=20, kill_every=4, processes=2)
    result = run_chaos(plan, tmp_path)
    print(describe(result))
    # The run did what it says: workers died, their clients came back and resumed, the others stayed.
    assert len(result.kills) == 5, result.kills
    assert result.clients["reconnected_clients"] > 0 and result.clients["resumes"] > 0, describe(result)
    assert result.clients["surviving_clients"] > 0, describe(result)
    assert result.publisher["answered"] > 500, describe(result)
    assert result.passed, describe(result) + "\n" + result.log_tail
