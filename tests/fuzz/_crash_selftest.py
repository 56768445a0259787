"""Not a parser's harness: one that crashes on purpose (on inputs starting with b"crash"), so that
tests/test_fuzz.py can show the runner catches a crash and names its input."""

from __future__ import annotations

import sys

import atheris


def check_one_input(data: bytes) -> None:
    if data.startswith(b"crash"):
        raise AssertionError("the self-test harness crashed, as asked")


if __name__ == "__main__":
    atheris.Setup(sys.argv, check_one_input)
    atheris.Fuzz()
