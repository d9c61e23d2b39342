# calico/node in Python. `make demo` runs the live multi-host demo; `make test` runs the suite.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: deps test unit integration system fuzz lint bench bench-felix bench-confd bench-dataplane bench-cni demo demo-down clean

deps:
	@scripts/install-deps

test: deps
	@$(VENV)/bin/ruff check --quiet . || { echo 'ruff: lint errors (make lint)'; exit 1; }
	@$(PY) -m pytest -q -ra tests; rc=$$?; if [ $$rc = 5 ]; then echo 'no tests were collected'; exit 1; fi; exit $$rc

unit: deps
	$(PY) -m pytest -q tests/unit

integration: deps
	$(PY) -m pytest -q tests/integration

system: deps
	$(PY) -m pytest -q tests/system

FUZZ_TESTS := tests/unit/test_hostile_models.py tests/reliability/test_fuzz_felix.py tests/reliability/test_fuzz_confd.py
# the hostile/fuzz property tests with random seeds and 10x the examples (tests/reliability/profiles.py)
fuzz: deps
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -q -ra --durations=10 $(FUZZ_TESTS)

lint: deps
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) *.egg-info build .pytest_cache

demo: deps
	@$(PY) scripts/demo

demo-down:
	@$(PY) scripts/demo --down

# CNI plugin ADD/DEL latency (direct and under podman), podman run -> first cross-node ping
bench-cni: deps
	$(PY) bench/bench_cni.py --section docs/bench/cni.md

.PHONY: bench-cluster-scale
# one node of a 500-host cluster: 5k/20k/50k remote endpoints, 1,000 policies, churn 200/s (not in CI)
bench-cluster-scale: deps
	$(PY) bench/bench_cluster_scale.py --section docs/bench/cluster-scale.md

.PHONY: bench-conntrack
# Felix's conntrack deletion of released addresses: conntrack CLI vs pyroute2 netlink (~30 s)
bench-conntrack: deps
	$(PY) bench/bench_conntrack.py --section docs/bench/conntrack.md

bench-confd: deps
	$(PY) bench/bench_confd.py

bench-dataplane: deps
	$(PY) bench/bench_dataplane.py --backend nft
	$(PY) bench/bench_dataplane.py --backend legacy

bench-felix: deps
	$(PY) bench/bench_felix.py --backend nft
	$(PY) bench/bench_felix.py --backend legacy
	$(PY) bench/bench_policy.py --backend nft

.PHONY: bench-policy
# tiered policy: 50 policies in 3 tiers over 1,000 endpoints, relabel latency p50/p99
bench-policy: deps
	$(PY) bench/bench_policy.py --backend nft
	$(PY) bench/bench_policy.py --backend legacy

.PHONY: bench-ipam
# IPAM: allocations/s (1 process, 5 in parallel), ipam check time up to 10,000 allocations
bench-ipam: deps
	$(PY) bench/bench_ipam.py --section docs/bench/ipam.md

.PHONY: bench-rr
# BGP at scale: 10/25/50 real calico-nodes, full mesh vs 2 route reflectors (heavy: ~25 min, ~8 GB at 50)
bench-rr: deps
	$(PY) bench/bench_rr_scale.py --section docs/bench/rr_scale.md

# bench-felix (both backends) + bench-confd + cluster + scale, then docs/benchmarks.md and docs/benchmarks-scale.png
bench: deps
	$(PY) bench/report.py
