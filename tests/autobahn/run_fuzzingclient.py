"""Run the Autobahn|Testsuite fuzzingclient against a wsd echo endpoint and judge the result.

Sets up a Python 2.7 virtualenv with `wstest` in `.venv-autobahn` on first use, optionally starts
the server under test, runs every case (permessage-deflate's 12.* and 13.* included) or the ones
`--cases` names, prints counts by behaviour and exits non-zero on any FAILED case not in
KNOWN_UNFIXABLE or if no case ran.

    python tests/autobahn/run_fuzzingclient.py --start-server auto
    python tests/autobahn/run_fuzzingclient.py --url ws://127.0.0.1:9001/echo --cases '1.*,12.1.*'
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from string import Template
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
AUTOBAHN_VENV = REPO_ROOT / ".venv-autobahn"
DEFAULT_REPORTS_DIR = REPO_ROOT / "reports" / "autobahn"  # /reports/ is git-ignored
SPEC_TEMPLATE = HERE / "fuzzingclient.json"
ECHO_HARNESS = HERE / "echo_server.py"
ECHO_PATH = "/echo"
MAX_MESSAGE_SIZE = 16 * 1024 * 1024  # the 9.1.6 / 9.2.6 cases send 16 MiB messages

# autobahntestsuite 25.10.1 pins its whole Python 2.7 dependency tree (Twisted 19.10, autobahn
# 0.10.9, ...) so it installs from PyPI alone; virtualenv 20.21 is the last to run on 2.7.
AUTOBAHN_REQUIREMENT = "autobahntestsuite==25.10.1"
VIRTUALENV_REQUIREMENT = "virtualenv<20.22"
PYENV_PYTHON2_VERSION = "2.7.18"

# FAILED cases that picows makes impossible to fix: case id -> why. Each one is also named, with
# why, in docs/conformance.md. Such a case may also pass (it depends on TCP segmentation).
KNOWN_UNFIXABLE: dict[str, str] = {
    "7.1.2": "picows parses the second CLOSE before delivering the first and fails it with 1002",
}


def find_python2() -> Path:
    """The pyenv Python 2.7 interpreter (AUTOBAHN_PYTHON2 overrides), or SystemExit saying how to get it."""
    override = os.environ.get("AUTOBAHN_PYTHON2")
    if override:
        return Path(override)
    pyenv = shutil.which("pyenv")
    if pyenv:
        pyenv_root = subprocess.run([pyenv, "root"], capture_output=True, text=True, check=True).stdout
        root = Path(pyenv_root.strip())
    else:
        root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    python2 = root / "versions" / PYENV_PYTHON2_VERSION / "bin" / "python"
    if not python2.exists():
        raise SystemExit(
            f"Python {PYENV_PYTHON2_VERSION} not found at {python2}: install it with "
            f"`pyenv install {PYENV_PYTHON2_VERSION}` or set AUTOBAHN_PYTHON2 to a python2.7 binary."
        )
    return python2


def ensure_wstest(venv: Path = AUTOBAHN_VENV) -> Path:
    """Return the `wstest` binary, creating the Python 2.7 virtualenv that holds it if needed."""
    wstest = venv / "bin" / "wstest"
    stamp = venv / ".installed"
    # The stamp names what was installed, so a half-finished or outdated venv is rebuilt.
    if wstest.exists() and stamp.exists() and stamp.read_text().strip() == AUTOBAHN_REQUIREMENT:
        return wstest
    python2 = find_python2()
    print(f"setting up {venv} with {AUTOBAHN_REQUIREMENT} (about a minute, once)", flush=True)
    shutil.rmtree(venv, ignore_errors=True)
    for command in (
        [python2, "-m", "pip", "install", "--quiet", VIRTUALENV_REQUIREMENT],
        [python2, "-m", "virtualenv", "--quiet", venv],
        [venv / "bin" / "pip", "install", "--quiet", AUTOBAHN_REQUIREMENT],
    ):
        # pip 19 on 2.7 prints pages of deprecation warnings: show its output only when it fails.
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"{shlex.join(map(str, command))} failed:\n{result.stdout}{result.stderr}")
    stamp.write_text(AUTOBAHN_REQUIREMENT + "\n")
    return wstest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wsd_supports_echo_path() -> bool:
    """True once `wsd serve` exists and routes `--echo-path` to the conformance EchoListener."""
    wsd = Path(sys.executable).parent / "wsd"
    if not wsd.exists():
        return False
    try:
        result = subprocess.run([wsd, "serve", "--help"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and "--echo-path" in result.stdout


def server_command(port: int, workdir: Path, kind: str = "auto") -> tuple[str, list[str]]:
    """The command that serves the echo endpoint on `port`: ("wsd" | "harness", argv).

    kind "auto" prefers the real `wsd serve` and falls back to tests/autobahn/echo_server.py.
    """
    if kind == "wsd" or (kind == "auto" and wsd_supports_echo_path()):
        argv = [
            str(Path(sys.executable).parent / "wsd"), "serve", "--workers", "1",
            "--port", str(port), "--api-port", str(free_port()),
            "--admin-socket", str(workdir / "wsd-admin.sock"),
            "--echo-path", ECHO_PATH, "--max-message-size", str(MAX_MESSAGE_SIZE),
            # wsd requires a bus ring of at least 4x the largest message (plus a header).
            "--ring-size", str(8 * MAX_MESSAGE_SIZE),
        ]  # fmt: skip
        return "wsd", argv
    argv = [sys.executable, str(ECHO_HARNESS), "--port", str(port), "--path", ECHO_PATH,
            "--max-message-size", str(MAX_MESSAGE_SIZE)]  # fmt: skip
    return "harness", argv


def start_server(argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))  # the harness imports server.* from the tree
    with log_path.open("wb") as log:
        return subprocess.Popen(argv, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)


def wait_for_port(
    host: str, port: int, timeout_s: float, server: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server is not None and server.poll() is not None:
            raise SystemExit(f"server exited with status {server.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {host}:{port} after {timeout_s:.0f}s: is the server running?")


def stop_server(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def run_suite(
    wstest: Path, url: str, reports_dir: Path, cases: tuple[str, ...] = ("*",), exclude: tuple[str, ...] = ()
) -> float:
    """Run the fuzzingclient on `cases` less `exclude` (wstest's patterns: "12.*", "13.1.2";
    output to reports_dir/wstest.log); return wall seconds."""
    shutil.rmtree(reports_dir, ignore_errors=True)
    reports_dir.mkdir(parents=True)
    spec = Template(SPEC_TEMPLATE.read_text()).substitute(
        URL=url, OUTDIR=str(reports_dir), CASES=json.dumps(list(cases)), EXCLUDE_CASES=json.dumps(list(exclude))
    )
    spec_path = reports_dir / "spec.json"
    spec_path.write_text(spec)
    started = time.monotonic()
    with (reports_dir / "wstest.log").open("wb") as log:
        # cwd=reports_dir: wstest writes stray files into its working directory.
        subprocess.run([wstest, "-m", "fuzzingclient", "-s", spec_path], cwd=reports_dir, stdout=log,
                       stderr=subprocess.STDOUT, check=False)  # fmt: skip
    return time.monotonic() - started


def load_results(reports_dir: Path) -> dict[str, dict]:
    """Case id -> result entry ({"behavior", "behaviorClose", "duration", ...}) from index.json."""
    index = reports_dir / "index.json"
    if not index.exists():
        return {}
    agents = json.loads(index.read_text())
    return {case: result for cases in agents.values() for case, result in cases.items()}


def seconds(result: dict) -> float:
    return result.get("duration", 0) / 1000  # wstest reports milliseconds


def case_sort_key(case_id: str) -> tuple[int, ...]:
    return tuple(int(part) for part in case_id.split("."))


def summarize(results: dict[str, dict], elapsed_s: float) -> list[str]:
    """Print counts by behaviour and the notable cases; return the unexpected FAILED case ids."""
    behaviors = Counter(result["behavior"] for result in results.values())
    close_behaviors = Counter(result["behaviorClose"] for result in results.values())
    print(f"Autobahn fuzzingclient: {len(results)} cases in {elapsed_s:.0f}s")
    for label, counts in (("behavior", behaviors), ("behaviorClose", close_behaviors)):
        print(f"  {label + ':':15} " + ", ".join(f"{name} {count}" for name, count in sorted(counts.items())))
    unexpected = []
    for case_id in sorted(results, key=case_sort_key):
        behavior = results[case_id]["behavior"]
        if behavior in ("OK", "INFORMATIONAL"):
            continue
        note = ""
        if behavior == "FAILED":
            if case_id in KNOWN_UNFIXABLE:
                note = f"  (known, unfixable: {KNOWN_UNFIXABLE[case_id]})"
            else:
                unexpected.append(case_id)
                note = "  <-- unexpected"
        print(f"  {case_id:8} {behavior:13} close={results[case_id]['behaviorClose']}{note}")
    slowest = sorted(results.items(), key=lambda item: item[1].get("duration", 0), reverse=True)[:3]
    print("  slowest: " + ", ".join(f"{case} {seconds(result):.1f}s" for case, result in slowest))
    return unexpected


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="echo endpoint of an already running server, ws://host:port/path")
    target.add_argument("--start-server", choices=["auto", "wsd", "harness"],
                        help="start this server on a free port, test it, stop it")  # fmt: skip
    parser.add_argument("--reports-dir", type=Path, default=DEFAULT_REPORTS_DIR)
    parser.add_argument("--cases", default="*", help="comma list of wstest case patterns (default: all)")
    parser.add_argument("--exclude-cases", default="", help="comma list of case patterns to leave out")
    args = parser.parse_args(argv)
    cases = [case.strip() for case in args.cases.split(",") if case.strip()]
    exclude = [case.strip() for case in args.exclude_cases.split(",") if case.strip()]

    wstest = ensure_wstest()
    args.reports_dir = args.reports_dir.resolve()
    server = None
    url = args.url
    try:
        if url is None:
            port = free_port()
            workdir = Path(tempfile.mkdtemp(prefix="wsd-autobahn-"))
            kind, command = server_command(port, workdir, args.start_server)
            print(f"server under test ({kind}): {shlex.join(command)}", flush=True)
            server = start_server(command, workdir / "server.log")
            url = f"ws://127.0.0.1:{port}{ECHO_PATH}"
            wait_for_port("127.0.0.1", port, 30, server)
        else:
            parts = urlsplit(url)
            wait_for_port(parts.hostname or "127.0.0.1", parts.port or 80, 30)
        elapsed_s = run_suite(wstest, url, args.reports_dir, tuple(cases), tuple(exclude))
    finally:
        if server is not None:
            stop_server(server)

    results = load_results(args.reports_dir)
    if not results:
        log_tail = (args.reports_dir / "wstest.log").read_text(errors="replace")[-3000:]
        print(f"Autobahn ran no case against {url}; wstest output ends with:\n{log_tail}")
        return 2
    unexpected = summarize(results, elapsed_s)
    print(f"  report: {args.reports_dir / 'index.html'}")
    if unexpected:
        print(f"FAILED cases not in KNOWN_UNFIXABLE: {', '.join(unexpected)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
