"""Runs the fuzz harnesses of tests/fuzz, each as its own process for a bounded time, and says what
they did: inputs tried, corpus size, and for a crash the input that caused it and the failure.

    python -m tests.fuzz.runner                      # every harness, 60 s each (make fuzz)
    python -m tests.fuzz.runner --seconds 5 fuzz_config
    FUZZ_SECONDS=300 make fuzz

Each harness starts from its seeds (tests/fuzz/seeds/<harness>/, which also keeps every crash found so
far, so it is replayed first) and a working corpus that grows across runs (--corpus, default
.fuzz/corpus/<harness>, not in git). A crashing input is written to --artifacts (default .fuzz/crashes);
copy it into the seeds once the bug is fixed. Exit status 1 if any harness crashed.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPOSITORY = HERE.parent.parent
HARNESSES = (
    "fuzz_client_request", "fuzz_ws_assembler", "fuzz_permessage_deflate", "fuzz_http_api", "fuzz_bus_record",
    "fuzz_config",
)  # fmt: skip

# Per harness: the largest input libFuzzer makes (it starts smaller and grows towards it).
MAX_LENGTH = {"fuzz_http_api": 8192, "fuzz_config": 4096}
# An input slower than this is a hang (a parser that loops or backtracks), reported like a crash.
INPUT_TIMEOUT_S = 10
# Memory of one harness process: more is reported like a crash (a parser that grows without bound).
RSS_LIMIT_MB = 1536

_EXECUTED = re.compile(rb"stat::number_of_executed_units:\s*(\d+)")
_DONE = re.compile(rb"Done (\d+) runs in (\d+) second")
_ARTIFACT = re.compile(rb"Test unit written to (\S+)")
# libFuzzer's verdict line: "==123== ERROR: libFuzzer: deadly signal", "... timeout after 10 seconds", ...
_ERROR = re.compile(rb"==\d+== ERROR: libFuzzer: ([^\n]+)")


@dataclass
class HarnessRun:
    harness: str
    seconds: float
    runs: int = 0
    corpus: int = 0
    crashed: bool = False
    failure: str = ""  # libFuzzer's verdict and the Python traceback
    crash_input_path: str | None = None
    crash_input: str | None = None  # repr() of the first bytes
    crash_input_base64: str | None = None
    command: list[str] = field(default_factory=list)


def run_harness(name: str, seconds: int, corpus_root: Path, artifacts: Path) -> HarnessRun:
    corpus = corpus_root / name
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    seeds = HERE / "seeds" / name
    command = [
        sys.executable, "-m", f"tests.fuzz.{name}",
        f"-max_total_time={seconds}",
        f"-timeout={INPUT_TIMEOUT_S}",
        f"-rss_limit_mb={RSS_LIMIT_MB}",
        f"-max_len={MAX_LENGTH.get(name, 4096)}",
        f"-artifact_prefix={artifacts}/{name}-",
        "-print_final_stats=1",
    ]  # fmt: skip
    dictionary = HERE / "dicts" / f"{name}.dict"
    if dictionary.exists():
        command.append(f"-dict={dictionary}")
    command += [str(corpus), str(seeds)]
    started = time.monotonic()
    completed = subprocess.run(
        command, cwd=REPOSITORY, capture_output=True, timeout=seconds + 120 + INPUT_TIMEOUT_S, check=False
    )
    output = completed.stdout + completed.stderr
    result = HarnessRun(name, round(time.monotonic() - started, 1), command=command)
    executed = _EXECUTED.search(output) or _DONE.search(output)
    result.runs = int(executed.group(1)) if executed else 0
    result.corpus = sum(1 for _ in corpus.iterdir())
    if completed.returncode != 0:
        result.crashed = True
        verdict = _ERROR.search(output)
        traceback_start = output.find(b"=== Uncaught Python exception")
        parts = [verdict.group(1).decode(errors="replace") if verdict else f"exit status {completed.returncode}"]
        if traceback_start >= 0:
            # The traceback ends where libFuzzer's own lines (or the instrumentation log) resume.
            end = min(
                (
                    i
                    for i in (output.find(b"\nINFO:", traceback_start), output.find(b"\n==", traceback_start))
                    if i >= 0
                ),
                default=traceback_start + 6000,
            )
            parts.append(output[traceback_start : min(end, traceback_start + 6000)].decode(errors="replace"))
        else:
            parts.append(output[-4000:].decode(errors="replace"))
        result.failure = "\n".join(parts)
        artifact = _ARTIFACT.search(output)
        if artifact:
            path = Path(artifact.group(1).decode())
            result.crash_input_path = str(path)
            if path.exists():
                data = path.read_bytes()
                result.crash_input = repr(data[:2000]) + ("..." if len(data) > 2000 else "")
                result.crash_input_base64 = base64.b64encode(data).decode()
    return result


def describe(result: HarnessRun) -> str:
    if not result.crashed:
        return f"{result.harness}: {result.runs} inputs in {result.seconds} s, corpus {result.corpus}, no crash"
    lines = [
        f"{result.harness}: CRASH after {result.runs} inputs ({result.seconds} s)",
        result.failure,
        f"crashing input ({result.crash_input_path}): {result.crash_input}",
        f"  base64: {result.crash_input_base64}",
        f"  replay: {' '.join(result.command[:3])} {result.crash_input_path}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("harnesses", nargs="*", default=list(HARNESSES), help=f"default: all of {HARNESSES}")
    parser.add_argument("--seconds", type=int, default=60, help="fuzzing time per harness (default 60)")
    parser.add_argument("--corpus", type=Path, default=REPOSITORY / ".fuzz" / "corpus")
    parser.add_argument("--artifacts", type=Path, default=REPOSITORY / ".fuzz" / "crashes")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.harnesses) - set(HARNESSES) - {"_crash_selftest"})
    if unknown:
        parser.error(f"no such harness {unknown}; known: {', '.join(HARNESSES)}")
    results = []
    for name in args.harnesses:
        result = run_harness(name, args.seconds, args.corpus, args.artifacts)
        print(describe(result), flush=True)
        results.append(result)
    total = sum(r.runs for r in results)
    crashes = sum(r.crashed for r in results)
    print(f"fuzzing: {total} inputs over {len(results)} harnesses, {crashes} crashed")
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
