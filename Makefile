# memtrace: `make help` lists the targets. Most need root: on a normal host use `sudo make ...`.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.memtrace-installed
ARGS   ?=
PYTEST_ARGS ?=

# $(call pytest_tier,MARK): run one pytest tier; "no tests collected" (exit 5) is not a failure.
define pytest_tier
echo "=== pytest -m $(1) ==="; \
rc=0; $(PY) -m pytest -m $(1) -q $(PYTEST_ARGS) || rc=$$?; \
if [ $$rc -eq 5 ]; then echo "($(1): no tests collected)"; rc=0; fi; \
exit $$rc
endef

.PHONY: help setup run test test-unit test-bpf test-e2e test-deploy test-vm lint bench uninstall clean

help: ## show this help
	@echo "usage: sudo make <target>   (as root, plain 'make <target>')"
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

setup: ## install packages, headers, .venv; memtrace in /usr/local/lib/memtrace (root)
	bash scripts/setup.sh

# The venv alone (no root needed once it exists): for test-unit and lint.
$(STAMP): pyproject.toml
	bash scripts/setup.sh

run: setup ## run memtrace: sudo make run ARGS="--help"
	$(VENV)/bin/memtrace $(ARGS)

test: setup ## run all test tiers (unit, bpf, e2e, deploy, vm); each runs even if one failed
	@failed=""; \
	for tier in unit bpf e2e deploy vm; do \
	  rc=0; \
	  if [ $$tier = vm ]; then \
	    echo "=== the VM tier: tests/vm/run_vm.py ==="; \
	    $(PY) tests/vm/run_vm.py || rc=$$?; \
	  else \
	    echo "=== pytest -m $$tier ==="; \
	    $(PY) -m pytest -m $$tier -q $(PYTEST_ARGS) || rc=$$?; \
	  fi; \
	  case $$rc in \
	    0) echo "--- $$tier: ok" ;; \
	    5) echo "--- $$tier: no tests collected" ;; \
	    *) echo "--- $$tier: FAILED (pytest exit $$rc)"; failed="$$failed $$tier" ;; \
	  esac; \
	done; \
	if [ -n "$$failed" ]; then echo "FAILED tiers:$$failed"; exit 1; fi; \
	echo "all test tiers passed"

test-unit: $(STAMP) ## unit tests only (no root needed once the venv exists)
	@$(call pytest_tier,unit)

test-bpf: setup ## bpf tests only: real kernel, real probes (root)
	@$(call pytest_tier,bpf)

test-e2e: setup ## end-to-end tests of the installed memtrace command (root)
	@$(call pytest_tier,e2e)

test-deploy: setup ## deploy/ tier: image built, run as the DaemonSet, scraped (root, podman)
	@$(call pytest_tier,deploy)

test-vm: setup ## the VM tier: Debian's stock kernel under qemu, bpf + vm tests inside (root)
	$(PY) tests/vm/run_vm.py $(PYTEST_ARGS)

lint: $(STAMP) ## ruff check tracer tests bench; mypy tracer
	$(VENV)/bin/ruff check tracer tests bench
	$(VENV)/bin/mypy tracer

bench: setup ## run the benchmarks (bench/run_all.py) if present
	@if [ -f bench/run_all.py ]; then $(PY) bench/run_all.py; \
	else echo "bench/run_all.py not found: nothing to run"; fi

uninstall: ## remove /usr/local/bin/memtrace and /usr/local/lib/memtrace (root)
	bash scripts/setup.sh --uninstall

clean: ## remove .venv, build artifacts and caches
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -path ./.git -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
