"""The fixed memory cost of each wsd process: an idle `wsd serve --workers N`, no connections.

Starts wsd from a temporary directory (only the ports and the worker count on its command line, plus
`--wsd-flags`), waits until every worker serves and `--settle` seconds more, and reads each process's
/proc/PID/status (VmRSS, RssAnon, RssFile, RssShmem) and /proc/PID/smaps (PSS, and the mappings
holding the most resident memory: the Python allocator's arenas and malloc's heap are "[anon]" and
"[heap]", a shared library or extension by its file name), and the shared objects each one loaded
(from /proc/PID/maps: the part of an import that costs file pages). By default it first subscribes
and publishes once, so what a process imports on first use counts. It also lists the shared memory
the supervisor reserved (the bus segments' memfds): allocated whole at start, in no RSS until touched.

This is the per-process cost the issue's figure (server RSS / connections) spreads over the
connections: at 19,000 connections on 2 workers, each MiB of it is ~55 bytes per connection.

    .venv/bin/python -m bench.process_memory --workers 2 --tag 2w

(from the repository root; `make bench-process-memory`). Writes bench/results/process-memory-<tag>.json
and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

from bench.measure import RESULTS_DIR, command_line, cpu_model
from harness.wsd_process import WsdProcess

KIB = 1024
STATUS_FIELDS = ("VmRSS", "RssAnon", "RssFile", "RssShmem", "Threads")


def read_status(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon, RssFile, RssShmem in KiB and Threads, from /proc/PID/status."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in STATUS_FIELDS:
            found[key] = int(value.split()[0])
    return found


def read_smaps(pid: int) -> tuple[int, Counter]:
    """The process's PSS in KiB and its resident KiB per mapping name (a file's base name,
    "[heap]", "[stack]", or "[anon]" for unnamed anonymous memory; several mappings of one name add up)."""
    pss = 0
    resident: Counter = Counter()
    name = "[anon]"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if not fields:
            continue
        if not fields[0].endswith(":"):  # a mapping's header: address perms offset dev inode [path]
            name = os.path.basename(fields[5]) if len(fields) > 5 else "[anon]"
            if len(fields) > 5 and fields[5].startswith("["):
                name = fields[5]
        elif fields[0] == "Rss:":
            resident[name] += int(fields[1])
        elif fields[0] == "Pss:":
            pss += int(fields[1])
    return pss, resident


def shared_objects(pid: int) -> list[str]:
    """The shared objects (libraries and extension modules) mapped into the process."""
    names = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) > 5 and ".so" in fields[5]:
            names.add(os.path.basename(fields[5]))
    return sorted(names)


def reserved_shared_memory(pid: int) -> dict[str, int]:
    """The memfds `pid` holds (the bus segments, the per-address counts) and their sizes in bytes:
    the supervisor allocates them whole at start (posix_fallocate), so they are memory in use
    although no process's RSS counts a page of them until it touches it."""
    found: dict[str, int] = {}
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
            if target.startswith("/memfd:"):
                name = target.removeprefix("/memfd:").removesuffix(" (deleted)")
                found[name] = os.stat(fd).st_size
        except OSError:
            continue
    return dict(sorted(found.items()))


def use_once(server: WsdProcess) -> None:
    """One subscription and one publish through it, so what a process imports on first use counts."""
    import json

    from websockets.sync.client import connect

    with connect(server.url, open_timeout=10) as ws:
        ws.send(json.dumps({"op": "sub", "ch": "process-memory", "id": 1}))
        json.loads(ws.recv(timeout=10))
        server.publish("process-memory", {"hello": 1})
        json.loads(ws.recv(timeout=10))


def measure_process(process: psutil.Process, top: int) -> dict[str, Any]:
    status = read_status(process.pid)
    pss, resident = read_smaps(process.pid)
    return {
        "pid": process.pid,
        "title": process.name() if process.name().startswith("wsd") else " ".join(process.cmdline()[:4]),
        "status_kib": status,
        "pss_kib": pss,
        "top_mappings_kib": dict(resident.most_common(top)),
        "shared_objects": shared_objects(process.pid),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="wsd-procmem-") as directory:
        server = WsdProcess(Path(directory), workers=args.workers, flags=args.wsd_flags.split())
        server.start()
        try:
            if not args.untouched:
                use_once(server)
            time.sleep(args.settle)
            processes = list(server.processes().values())
            measured = [measure_process(p, args.top) for p in processes]
            reserved = reserved_shared_memory(processes[0].pid)
        finally:
            server.kill()
    return {"processes": measured, "reserved_shared_memory_bytes": reserved}


def _mib(kib: float) -> str:
    return f"{kib / KIB:.1f}"


def markdown_report(report: dict[str, Any]) -> str:
    processes = report["result"]["processes"]
    total = sum(p["status_kib"]["VmRSS"] for p in processes)
    total_pss = sum(p["pss_kib"] for p in processes)
    when = "right after start-up" if report["parameters"]["untouched"] else "after one subscription and one publish"
    lines = [
        f"# Process memory: idle `wsd serve --workers {report['parameters']['workers']}`",
        "",
        f"Command: `{report['command']}`. Machine: {report['machine']['cpu']}, {report['machine']['cpus']} CPUs, "
        f"Linux {report['machine']['kernel']}, Python {report['machine']['python']}. Started {report['started']}.",
        "",
        "MiB per process (from /proc/PID/status and smaps), no connection open:",
        "",
        "| process | VmRSS | RssAnon | RssFile | RssShmem | PSS |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for p in processes:
        s = p["status_kib"]
        lines.append(
            f"| {p['title']} | {_mib(s['VmRSS'])} | {_mib(s['RssAnon'])} | {_mib(s['RssFile'])} "
            f"| {_mib(s.get('RssShmem', 0))} | {_mib(p['pss_kib'])} |"
        )
    lines += [
        f"| **all** | **{_mib(total)}** | | | | **{_mib(total_pss)}** |",
        "",
        f"Measured {when} and {report['parameters']['settle']:g} s idle.",
        "",
        "Resident MiB of the largest mappings (`[anon]`: unnamed anonymous memory, mostly the Python "
        "allocator's arenas; `[heap]`: malloc's heap):",
        "",
    ]
    for p in processes:
        mappings = ", ".join(f"{name} {_mib(kib)}" for name, kib in p["top_mappings_kib"].items())
        lines.append(f"- {p['title']}: {mappings}")
    reserved = report["result"].get("reserved_shared_memory_bytes", {})
    if reserved:
        lines += [
            "",
            f"Shared memory the supervisor reserved at start (memfds, allocated whole; a page counts in an RSS "
            f"only once a process touched it): **{_mib(sum(reserved.values()) / KIB)} MiB**, "
            + ", ".join(f"{name} {_mib(size / KIB)}" for name, size in reserved.items()),
        ]
    lines += ["", "Shared objects loaded (the libraries by name; every one is in the JSON):", ""]
    for p in processes:
        libraries = [name for name in p["shared_objects"] if name.startswith(("lib", "ld-"))]
        lines.append(f"- {p['title']}: {len(p['shared_objects'])}, of which libraries: {', '.join(libraries)}")
    lines.append("")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.process_memory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--settle", type=float, default=2.0, help="seconds to wait after every worker serves")
    parser.add_argument("--untouched", action="store_true",
                        help="measure right after start-up (default: after one subscription and publish)")
    parser.add_argument("--top", type=int, default=10, help="mappings listed per process")
    parser.add_argument("--wsd-flags", default="", help="extra `wsd serve` flags")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--tag", default="")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tag = args.tag or f"{args.workers}w"
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    report = {
        "parameters": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "command": command_line(),
        "started": started,
        "machine": {
            "cpu": cpu_model(),
            "cpus": os.cpu_count(),
            "memory_bytes": psutil.virtual_memory().total,
            "kernel": platform.release(),
            "python": platform.python_version(),
        },
        "result": run(args),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    markdown = markdown_report(report)
    (args.out / f"process-memory-{tag}.json").write_text(json.dumps(report, indent=1))
    (args.out / f"process-memory-{tag}.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
