# Proconsul developer entry points. Everything runs from the virtualenv in .venv, which
# `make venv` creates (and every target that needs it depends on).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help venv run test test-netns-full test-deps demo lint proto bench clean

help:
	@echo "make run    dev agent, HTTP API on 127.0.0.1:8500"
	@echo "make test   create the venv if needed, install, run the whole test suite"
	@echo "            (extra pytest arguments: PYTEST_ARGS='-k raft -x')"
	@echo "make test-netns-full  tests/netns with 3 servers per datacenter (root; slow, not in make test)"
	@echo "make demo   two datacenters federated through mesh gateways on 127.0.0.0/8 (no root),"
	@echo "            in the foreground: prints what to try; Ctrl-C stops every process"
	@echo "make lint   ruff check, ruff format --check, mypy (strict) on raft/, gossip/ and server/"
	@echo "make proto  regenerate proto/*_pb2*.py from proto/*.proto"
	@echo "make bench  run bench/raft_bench.py and bench/kv_bench.py (vs etcd), bench/gossip_bench.py (gossip.sim),"
	@echo "            bench/register_bench.py (registrations/s through 3 client agents;"
	@echo "            its arguments: REGISTER_BENCH_ARGS='--services 3000 --json')"
	@echo "            bench/federation_bench.py (cross-dc reads through gateways, cold start)"
	@echo "            and bench/gateway_bench.py (mesh gateway throughput and new connections/s vs direct)"
	@echo "make venv   create .venv and install the project with its test and bench extras"
	@echo "make clean  remove the venv, caches and build output"

venv: $(STAMP)

# Creating the venv needs the venv and ensurepip modules; on Debian's own python3 they come
# in the python3-venv package, installed here when missing (CI runs as root).
$(PY):
	@if ! $(PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1; then \
		echo "$(PYTHON) lacks venv/ensurepip: installing python3-venv with apt-get"; \
		if [ "$$(id -u)" -ne 0 ]; then \
			echo "not root: run 'apt-get install python3-venv' as root, then retry" >&2; \
			exit 1; \
		fi; \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv; \
	fi
	$(PYTHON) -m venv $(VENV)

# Re-install only when pyproject.toml is newer than the stamp.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[test,bench]'
	touch $(STAMP)

run: venv
	$(VENV)/bin/proconsul agent -dev

test: venv test-deps
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-netns-full: venv test-deps
	PROCONSUL_NETNS_FULL=1 $(PY) -m pytest -q tests/netns $(PYTEST_ARGS)

# Debian packages some tests need: iproute2 (`ip`, for the network-namespace tests) and
# docker-compose (`docker-compose config` validates examples/federation). Installed when
# missing and root; otherwise those tests skip themselves, and this says so.
test-deps:
	@missing=""; \
	command -v ip >/dev/null 2>&1 || missing="$$missing iproute2"; \
	command -v docker-compose >/dev/null 2>&1 || missing="$$missing docker-compose"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" -ne 0 ]; then \
			echo "not root, missing:$$missing (apt-get install them as root); the tests that need them skip"; \
		else \
			echo "tests need$$missing: installing with apt-get"; \
			apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; \
		fi; \
	fi

# Foreground; Ctrl-C (or SIGTERM) stops every agent and gateway it started. DEMO_ARGS are
# passed on (e.g. DEMO_ARGS='--servers 1').
demo: venv
	$(PY) examples/federation/loopback.py $(DEMO_ARGS)

# All three checks run; the target fails if any of them failed.
lint: venv
	@status=0; \
	echo "$(VENV)/bin/ruff check ."; $(VENV)/bin/ruff check . || status=1; \
	echo "$(VENV)/bin/ruff format --check ."; $(VENV)/bin/ruff format --check . || status=1; \
	echo "$(VENV)/bin/mypy raft gossip server"; $(VENV)/bin/mypy raft gossip server || status=1; \
	exit $$status

proto: venv
	$(PY) -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. proto/*.proto

# The benchmark's peer and load generator come from Debian: etcd-server (etcd) and wrk,
# installed here when missing (as root). Extra arguments: BENCH_ARGS='--seconds 20 --json'.
bench: venv
	@missing=""; \
	command -v etcd >/dev/null 2>&1 || missing="$$missing etcd-server"; \
	command -v wrk >/dev/null 2>&1 || missing="$$missing wrk"; \
	if [ -n "$$missing" ]; then \
		echo "bench needs$$missing: installing with apt-get"; \
		if [ "$$(id -u)" -ne 0 ]; then \
			echo "not root: run 'apt-get install$$missing' as root, then retry" >&2; \
			exit 1; \
		fi; \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; \
	fi
	$(PY) bench/raft_bench.py $(BENCH_ARGS)
	$(PY) bench/kv_bench.py $(BENCH_ARGS)
	$(PY) bench/gossip_bench.py
	$(PY) bench/register_bench.py $(REGISTER_BENCH_ARGS)
	$(PY) bench/federation_bench.py
	$(PY) bench/gateway_bench.py

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis .benchmarks
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
