"""How fast wsd.server.auth decides: token verifications per second per core, and the per-request checks.

Verifies realistic connection tokens (`sub`, `exp`, two `subs` patterns, one `pubs`; 1,000 distinct
tokens in turn, so nothing is cached by accident) with `TokenVerifier.verify` for HS256, ES256 (P-256)
and RS256 (2048 bits), next to bare `jwt.decode` (PyJWT alone) to show what wsd's checks add. Then the
checks every request meets: the subscribe decision (exact, prefix, refused), the rate limiter, the
Origin check, and the memory an `Identity` plus a `RateState` take per connection.

One process, one core; each figure is operations per CPU-second (the box is shared), the median of
`--repeats` runs of about `--seconds` each.
Prints a Markdown table and writes `auth-verify-<tag>.json` and `.md` under `--out`. Hold the bench
lock while measuring (`make bench-auth` does):

    flock /tmp/wsd-bench.lock .venv/bin/python -m bench.auth_verify

(from the repository root).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import ssl
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import cryptography
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from bench.measure import RESULTS_DIR, command_line, cpu_model
from wsd.server.auth.keys import AuthSettings, load_token_key
from wsd.server.auth.origin import OriginPolicy
from wsd.server.auth.permissions import AccessPolicy, compile_patterns
from wsd.server.auth.ratelimit import RateLimiter
from wsd.server.auth.tokens import Identity, TokenVerifier

SECRET = "bench-secret-" + "x" * 40
NOW = time.time()
DISTINCT_TOKENS = 1000


def rate(operation: Callable[[int], None], seconds: float, repeats: int) -> dict:
    """Median operations per CPU-second of `operation(i)` over `repeats` runs of about `seconds` each.

    CPU time of this process, not wall time: the box is shared, and a run that loses the core to
    another process for a while would otherwise look slower than the code is. Wall-clock rates are
    kept alongside."""
    batch = 1
    while True:  # calibrate a batch that takes about `seconds`
        start = time.process_time()
        for i in range(batch):
            operation(i)
        elapsed = time.process_time() - start
        if elapsed > 0.05:
            break
        batch *= 4
    batch = max(1, int(batch * seconds / elapsed))
    cpu_rates, wall_rates = [], []
    for _ in range(repeats):
        gc.collect()
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(batch):
            operation(i)
        cpu_rates.append(batch / (time.process_time() - cpu))
        wall_rates.append(batch / (time.perf_counter() - wall))
    median = statistics.median(cpu_rates)
    return {
        "per_second": round(median),
        "min_per_second": round(min(cpu_rates)),
        "max_per_second": round(max(cpu_rates)),
        "wall_per_second": round(statistics.median(wall_rates)),
        "us_each": round(1e6 / median, 3),
        "runs": repeats,
        "operations_per_run": batch,
    }


def write_key(directory: Path, name: str, private_key) -> str:
    path = directory / name
    path.write_bytes(
        private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return str(path)


def claims(i: int) -> dict:
    return {"sub": f"user:{i}", "exp": int(NOW) + 3600, "subs": [f"user:{i}", "room:*"], "pubs": ["room:*"]}


def verification_cases(directory: Path) -> list[dict]:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cases = [
        ("HS256", AuthSettings(secret=SECRET), SECRET, SECRET),
        ("ES256", AuthSettings(public_key_file=write_key(directory, "ec.pem", ec_key)), ec_key, ec_key.public_key()),
        (
            "RS256",
            AuthSettings(public_key_file=write_key(directory, "rsa.pem", rsa_key)),
            rsa_key,
            rsa_key.public_key(),
        ),
    ]
    out = []
    for algorithm, settings, signing_key, verifying_key in cases:
        tokens = [jwt.encode(claims(i), signing_key, algorithm=algorithm) for i in range(DISTINCT_TOKENS)]
        verifier = TokenVerifier(load_token_key(settings))
        assert isinstance(verifier.verify(tokens[0], NOW), Identity)
        out.append(
            {
                "algorithm": algorithm,
                "token_bytes": len(tokens[0]),
                "verifier": verifier,
                "tokens": tokens,
                "verifying_key": verifying_key,
            }
        )
    return out


def measure_verification(case: dict, seconds: float, repeats: int) -> dict:
    tokens, verifier, key, algorithm = case["tokens"], case["verifier"], case["verifying_key"], case["algorithm"]
    ours = rate(lambda i: verifier.verify(tokens[i % DISTINCT_TOKENS], NOW), seconds, repeats)
    bare = rate(lambda i: jwt.decode(tokens[i % DISTINCT_TOKENS], key, algorithms=[algorithm]), seconds, repeats)
    return {"algorithm": algorithm, "token_bytes": case["token_bytes"], "wsd_verify": ours, "pyjwt_decode": bare}


def measure(seconds: float, repeats: int, directory: Path) -> dict:
    results: dict = {"verify": [], "checks": {}, "memory": {}}
    cases = verification_cases(directory)
    for case in cases:
        results["verify"].append(measure_verification(case, seconds, repeats))
        row = results["verify"][-1]
        print(
            f"{row['algorithm']}: {row['wsd_verify']['per_second']:,}/s "
            f"({row['pyjwt_decode']['per_second']:,}/s bare PyJWT)",
            file=sys.stderr,
        )

    policy = AccessPolicy(compile_patterns(["public:*", "news"]))
    identity = Identity("user:1", NOW + 3600, compile_patterns(["user:1", "room:*", "team:7:*"]), compile_patterns([]))
    checks = results["checks"]
    checks["subscribe_exact"] = rate(lambda i: policy.may_subscribe(identity, "user:1"), seconds, repeats)
    checks["subscribe_prefix"] = rate(lambda i: policy.may_subscribe(identity, "room:42"), seconds, repeats)
    checks["subscribe_public"] = rate(lambda i: policy.may_subscribe(identity, "public:x"), seconds, repeats)
    checks["subscribe_refused"] = rate(lambda i: policy.may_subscribe(identity, "user:2"), seconds, repeats)
    limiter = RateLimiter(100)
    state = limiter.new_state(0.0)
    checks["rate_limit_check"] = rate(lambda i: limiter.check(state, i * 0.011), seconds, repeats)
    origins = OriginPolicy(["https://app.example.com", "https://www.example.com"])
    checks["origin_allowed"] = rate(lambda i: origins.allows("https://app.example.com"), seconds, repeats)
    checks["origin_normalised"] = rate(lambda i: origins.allows("HTTPS://App.Example.com:443"), seconds, repeats)

    # Per-connection memory: what a connection holds once authenticated (its Identity, whose
    # compiled patterns are shared, and its RateState), measured over many connections.
    hs = cases[0]
    count = 20_000
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    held = [hs["verifier"].verify(hs["tokens"][i % DISTINCT_TOKENS], NOW) for i in range(count)]
    middle = tracemalloc.take_snapshot()
    states = [limiter.new_state(float(i)) for i in range(count)]
    for i, s in enumerate(states):
        limiter.check(s, i + 0.5)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    identity_bytes = sum(stat.size_diff for stat in middle.compare_to(before, "filename")) / count
    state_bytes = sum(stat.size_diff for stat in after.compare_to(middle, "filename")) / count
    results["memory"] = {
        "identity_bytes_per_connection": round(identity_bytes),
        "rate_state_bytes_per_connection": round(state_bytes),
        "note": f"tracemalloc over {count} connections whose tokens have {DISTINCT_TOKENS} distinct subs claims "
        "(distinct subs strings); patterns shared by equal claims are counted once",
    }
    del held, states
    return results


def markdown(report: dict) -> str:
    lines = [
        f"# Token verification and auth checks ({report['tag']})",
        "",
        f"{report['machine']['cpu']}, one core; Python {report['machine']['python']}, PyJWT "
        f"{report['machine']['pyjwt']}, cryptography {report['machine']['cryptography']}, "
        f"{report['machine']['openssl']}. Operations per CPU-second of the one process (median of "
        f"{report['repeats']} runs; the box is shared: load average {report['load_average']['before']} before, "
        f"{report['load_average']['after']} after); `{report['command']}`.",
        "",
        "| algorithm | token bytes | wsd verify/s | µs each | bare PyJWT decode/s | wsd / PyJWT |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in report["results"]["verify"]:
        ours, bare = row["wsd_verify"], row["pyjwt_decode"]
        lines.append(
            f"| {row['algorithm']} | {row['token_bytes']} | {ours['per_second']:,} | {ours['us_each']} | "
            f"{bare['per_second']:,} | {ours['per_second'] / bare['per_second']:.1f}x |"
        )
    lines += ["", "| per-request check | ops/s | µs each |", "|---|---:|---:|"]
    for name, figures in report["results"]["checks"].items():
        lines.append(f"| {name.replace('_', ' ')} | {figures['per_second']:,} | {figures['us_each']} |")
    memory = report["results"]["memory"]
    lines += [
        "",
        f"Memory per authenticated connection: Identity {memory['identity_bytes_per_connection']} bytes, "
        f"RateState {memory['rate_state_bytes_per_connection']} bytes ({memory['note']}).",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.auth_verify", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tag", default="1core")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder (default bench/results)")
    args = parser.parse_args()
    load_before = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory() as directory:
        results = measure(args.seconds, args.repeats, Path(directory))
    load_after = [round(x, 2) for x in os.getloadavg()]
    report = {
        "tag": args.tag,
        "command": command_line(),
        "repeats": args.repeats,
        "seconds_per_run": args.seconds,
        "load_average": {"before": load_before, "after": load_after},
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "pyjwt": jwt.__version__,
            "cryptography": cryptography.__version__,
            "openssl": ssl.OPENSSL_VERSION,
        },
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"auth-verify-{args.tag}.json"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    json_path.with_suffix(".md").write_text(text)
    print(text)
    print(f"wrote {json_path} and {json_path.with_suffix('.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
