# wsd: `make run` and `make test` do all set-up on a fresh machine (python3, gcc, package registries).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.stamp-install
# Everything that goes into the installed package: a change to any of it reinstalls.
SOURCES := setup.py pyproject.toml $(shell find server ext balancer -type f \( -name '*.py' -o -name '*.pyx' \
	-o -name '*.pxd' -o -name '*.html' -o -name '*.js' \))

.PHONY: run run-auth test install lint clean autobahn fuzz chaos bench-fanout bench-compression bench-connections bench-held bench-auth bench-auth-cost bench-peers bench-api bench-cluster bench-process-memory dashboard-screenshot system-deps

# picows before the build: ext/connmem.pyx compiles against picows's declarations (picows.pxd).
$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip 'setuptools>=68' wheel 'Cython>=3.0' 'picows>=2.3,<2.4'

# wsd is installed into the venv as a user installs it (`pip install .`, not editable), so the tests
# run the installed package. Reinstall only when a source changed: the Cython objects in build/ are
# reused (a few seconds), and build/lib's Python files are dropped first so a removed module does not
# linger in the installed package.
$(STAMP): $(PY) $(SOURCES)
	rm -rf build/lib.*/wsd/server build/lib.*/wsd/balancer build/lib.*/wsd/ext/*.py
	$(PIP) install -q --no-build-isolation '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(VENV)/bin/wsd serve

# The same demo with auth on (docs/auth.md): an ES256 key pair in .demo-auth/ (made once), the demo
# token server of docs/examples/issue_token.py on :8082 (a token for whoever asks: the app's backend),
# and wsd verifying them with the public key. Open the URL it prints.
DEMO_AUTH := .demo-auth
run-auth: install
	@mkdir -p $(DEMO_AUTH)
	@test -f $(DEMO_AUTH)/private.pem || $(PY) docs/examples/issue_token.py new-keypair \
		$(DEMO_AUTH)/private.pem $(DEMO_AUTH)/public.pem
	@echo "demo with tokens: open http://127.0.0.1:8080/?token_url=http://127.0.0.1:8082/token"
	@$(PY) docs/examples/issue_token.py serve --private-key $(DEMO_AUTH)/private.pem --port 8082 \
		--subs feed --pubs feed --ttl 120 & trap "kill $$!" EXIT INT TERM; \
	$(VENV)/bin/wsd serve --auth-public-key $(DEMO_AUTH)/public.pem

# Debian packages listed in system-packages.txt (redis-server, nftables, ...): installed only when
# missing, and only as root; `make test` as non-root skips the tests that need them, with a message.
system-deps:
	@pkgs=$$(grep -v '^#' system-packages.txt | tr '\n' ' '); missing=""; \
	for p in $$pkgs; do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then echo "installing:$$missing"; apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	  else echo "not root: cannot install$$missing (tests needing them will be skipped)"; fi; \
	fi

test: install system-deps
	$(PY) -m pytest -q --durations=30

lint: install
	$(VENV)/bin/ruff check .

# Autobahn|Testsuite, every case (permessage-deflate's 12.* and 13.* too: about half an hour), against a
# freshly started `wsd serve --echo-path` (or tests/autobahn/echo_server.py); see docs/conformance.md.
autobahn: install
	$(PY) tests/autobahn/run_fuzzingclient.py --start-server auto

# Fuzzing (atheris): every parser of untrusted input for FUZZ_SECONDS each (tests/fuzz/runner.py); the
# corpus grows in .fuzz/corpus across runs, crashes land in .fuzz/crashes. `make test` runs each briefly.
FUZZ_SECONDS ?= 60
fuzz: install
	$(PY) -m tests.fuzz.runner --seconds $(FUZZ_SECONDS) --json .fuzz/results.json

# Chaos under load (harness/chaos.py): 10,000 resuming clients on 4 workers, 20 channels at 50 msg/s in
# all, a random worker SIGKILLed every 5 s for 60 s; fails on any duplicate, gap or reused offset.
# tests/test_chaos.py runs it at 1,000 clients for 20 s in `make test`. It holds the benchmark lock: it
# loads the box as a benchmark does, and a benchmark running beside it starves its clients.
CHAOS_FLAGS ?=
chaos: install
	flock /tmp/wsd-bench.lock $(PY) -m harness.chaos --clients 10000 --workers 4 --channels 20 --rate 50 --seconds 60 --kill-every 5 \
		--processes 4 --json reports/chaos.json $(CHAOS_FLAGS)

# Benchmarks run as modules from the repository root (`python -m bench.<name>`); what they share with
# the tests (wsd as a subprocess, the load generator) is in harness/. Each holds the shared benchmark
# lock so its figures never overlap another measurement on this box.

# Fan-out benchmark: 10,000 subscribers on 2 workers, one publisher; writes bench/results/ (see bench/fanout.py).
bench-fanout: install
	flock /tmp/wsd-bench.lock $(PY) -m bench.fanout

# permessage-deflate: bytes on the wire and server CPU per delivery of a ~1 KB JSON notification,
# compression on vs off, broadcast and targeted; 2,000 connections on 2 workers (see bench/compression.py).
bench-compression: install
	flock /tmp/wsd-bench.lock $(PY) -m bench.compression --connections 2000 --messages 1000 --per-user 10 --tag 2w-2k

# Connection benchmark: N idle WebSocket clients from Locust (distributed), memory per connection,
# handshake rate, broadcasts to all N; writes bench/results/ (see bench/connections.py).
N ?= 200000
bench-connections: install
	flock /tmp/wsd-bench.lock $(PY) -m bench.connections --connections $(N)

# N idle connections held by the fast load generator (picows, harness/loadgen.py): server memory per
# connection (against Node `ws` with SERVERS=wsd,node_ws) and broadcast latency, with whose time it is.
SERVERS ?= wsd
bench-held: install
	flock /tmp/wsd-bench.lock $(PY) -m bench.held_connections --connections $(N) --servers $(SERVERS)

# Token verifications per second (HS256, ES256, RS256) and the per-request auth checks, one core;
# writes bench/results/auth-verify-* (see bench/auth_verify.py).
bench-auth: install
	flock /tmp/wsd-bench.lock $(PY) -m bench.auth_verify

# Handshake rate and fan-out with auth on vs off and TLS on vs off, in one run (plain, hs256, es256,
# tls, tls+es256; 5,000 subscribers on 2 workers); writes bench/results/auth-cost-* (see bench/auth_cost.py).
bench-auth-cost: install
	flock /tmp/wsd-bench.lock $(PY) -m bench.auth_cost --subscribers 5000 --tag 2w-5k

# The publish API alone: pipelined POST /api/publish against a publisher that answers at once;
# requests/s and server CPU per request; writes bench/results/api-throughput-* (see bench/api_throughput.py).
bench-api: install
	flock /tmp/wsd-bench.lock $(PY) -m bench.api_throughput

# Fan-out against the peers (bench/peers/): wsd (2 workers), Node ws, socket.io 4 + Redis adapter (2
# processes), Python websockets; 10,000 subscribers; burst, paced latency, targeted. Installs the peers
# (npm ci, pip, apt-get redis-server as root), writes bench/results/peers-*.
bench-peers: install
	flock /tmp/wsd-bench.lock $(PY) -m bench.peers.run --setup --tag 2core-10k

# The fixed memory cost of each process: an idle `wsd serve --workers 2`, per process VmRSS, RssAnon,
# RssFile, PSS and the largest mappings; writes bench/results/process-memory-* (see bench/process_memory.py).
bench-process-memory: install
	flock /tmp/wsd-bench.lock $(PY) -m bench.process_memory --workers 2 --tag 2w

# The cross-host bus: three hosts (network namespaces, as root) sharing one Redis, 10,000 subscribers,
# wsd --cluster against socket.io 4 + @socket.io/redis-adapter in the same run (npm ci as needed);
# writes bench/results/cluster-* (see bench/cluster.py).
bench-cluster: install system-deps
	flock /tmp/wsd-bench.lock $(PY) -m bench.cluster --setup --tag 3hosts-10k

# The README's dashboard screenshot: a real Prometheus scraping wsd (2 workers) through ~4 minutes of load
# (3,000 resuming subscribers, steady publishes and a burst, churn, slow readers, a rolling reload, a
# killed worker), drawn by deploy/render_dashboard.py into docs/dashboard.png (see bench/dashboard_run.py).
dashboard-screenshot: install
	flock /tmp/wsd-bench.lock $(PY) -m bench.dashboard_run --out docs/dashboard.png

clean:
	rm -rf build dist *.egg-info ext/*.c ext/*.so harness/*.so .fuzz $(VENV) $(DEMO_AUTH)
