"""A short run of every fuzz harness (tests/fuzz): each as its own atheris process for a few seconds
(FUZZ_TEST_SECONDS, default 4), replaying its seeds and the crashes found so far first. A crash fails
the test with the crashing input; `make fuzz` runs the same harnesses for longer."""

from __future__ import annotations

import os

import pytest

from tests.fuzz import runner

SECONDS = int(os.environ.get("FUZZ_TEST_SECONDS", "4"))


@pytest.mark.parametrize("harness", runner.HARNESSES)
def test_fuzz_harness_finds_no_crash(harness, tmp_path):
    result = runner.run_harness(harness, SECONDS, tmp_path / "corpus", tmp_path / "crashes")
    print(runner.describe(result))
    assert not result.crashed, runner.describe(result)
    assert result.runs > 0, f"{harness} tried no input: {result.failure}"


def test_the_runner_reports_a_crash_and_its_input(tmp_path):
    result = runner.run_harness("_crash_selftest", 30, tmp_path / "corpus", tmp_path / "crashes")
    assert result.crashed
    assert "the self-test harness crashed, as asked" in result.failure
    assert result.crash_input is not None and result.crash_input.startswith("b'crash")
