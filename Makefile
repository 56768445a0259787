# wsd: `make run` and `make test` do all set-up on a fresh machine (python3, gcc, package registries).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.stamp-install
SOURCES := setup.py pyproject.toml $(wildcard ext/*.pyx ext/*.pxd)

.PHONY: run test install lint clean autobahn bench-fanout

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel Cython

# Reinstall only when the build inputs change: re-running `make run` is fast.
$(STAMP): $(PY) $(SOURCES)
	$(PIP) install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(VENV)/bin/wsd serve

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf build *.egg-info ext/*.c ext/*.so $(VENV)
