# The two commands of the README: `make demo` and `make test`. Each creates .venv from
# pyproject.toml first, so a fresh machine needs only Python 3.11, pip and make.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-one test-all test-python lint bench clean browser

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m allcores demo

# The report's browser tests (tests/test_report.py) drive Debian's Chromium through its driver.
# Installed here when missing and we are root (as CI is); elsewhere those tests skip and say how.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then \
		:; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium and chromium-driver for the report's browser tests"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq chromium chromium-driver >/dev/null) \
		|| echo "could not install chromium: the browser tests will skip"; \
	else \
		echo "no chromium here and not root: the browser tests will skip" \
			"(install them with: apt-get install -y chromium chromium-driver)"; \
	fi

# `make test` (what CI runs: .ci/run) is ruff, mypy and the whole suite on .venv's Python, then
# the whole suite on every other Python that pyproject.toml claims and the machine has
# (pythonX.Y on PATH, or a pyenv build), each in its own .venv-X.Y made from pyproject.toml (and
# remade when pyproject.toml changes; .gitignore keeps them out of git). A version the machine
# lacks is reported in one line and skipped, so a machine with only one Python still passes.
# The versions run one after another, never at once: the suite times real processes, and
# its leak check reads all of /dev/shm. `make test-one` is the first part alone (ruff, mypy,
# the suite on .venv's Python), for a quick run while developing; `make test-python V=3.12`
# runs the suite on one version.
SUPPORTED_PYTHONS := 3.10 3.11 3.12 3.13
PYENV_ROOT ?= $(HOME)/.pyenv

test: test-one
	@done=$$($(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	for v in $(SUPPORTED_PYTHONS); do \
	  [ "$$v" = "$$done" ] || $(MAKE) --no-print-directory test-python V=$$v || exit 1; \
	done

test-one: $(STAMP) browser
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m mypy
	@echo "== the suite on Python $$($(PY) -c 'import sys; print(sys.version.split()[0])') (.venv)"
	$(PY) -m pytest -q

# The former name of `make test`, kept for the commands people already type.
test-all: test

# The suite on one Python: `make test-python V=3.12`.
test-python:
	@test -n "$(V)" || { echo "usage: make test-python V=3.12"; exit 2; }
	@py=""; \
	for p in python$(V) $$(ls -d $(PYENV_ROOT)/versions/$(V).*/bin/python$(V) 2>/dev/null | sort -rV); do \
	  if "$$p" -c 'import sys; sys.exit("%d.%d" % sys.version_info[:2] != "$(V)")' 2>/dev/null; \
	  then py=$$p; break; fi; \
	done; \
	if [ -z "$$py" ]; then \
	  echo "make test: no Python $(V) on this machine (pyproject.toml claims it): skipped"; \
	  exit 0; \
	fi; \
	if [ ! -f .venv-$(V)/.installed ] || [ pyproject.toml -nt .venv-$(V)/.installed ]; then \
	  echo "== creating .venv-$(V) from pyproject.toml ($$py)"; \
	  rm -rf .venv-$(V) && \
	  "$$py" -m venv .venv-$(V) && \
	  .venv-$(V)/bin/python -m pip install --quiet --upgrade pip && \
	  .venv-$(V)/bin/python -m pip install --quiet -e '.[test]' && \
	  touch .venv-$(V)/.installed || exit 1; \
	fi; \
	echo "== the suite on Python $$(.venv-$(V)/bin/python -c 'import sys; print(sys.version.split()[0])') (.venv-$(V))"; \
	.venv-$(V)/bin/python -m pytest -q

# Every benchmark script in turn (about 25 minutes on 2 cores); numbers also land in bench-out/.
bench: $(STAMP)
	mkdir -p bench-out
	-$(PY) benchmarks/run.py --json bench-out/run.json
	-$(PY) benchmarks/w4_w5_data_plane.py --json bench-out/data_plane.json
	-$(PY) benchmarks/q1_queue.py --json bench-out/queue.json
	-$(PY) benchmarks/w6_images.py --json bench-out/images.json
	-$(PY) benchmarks/w8_simulate.py --json bench-out/simulate.json
	-$(PY) benchmarks/data_bench.py --json bench-out/data.json
	-$(PY) benchmarks/imap_memory.py --json bench-out/imap_memory.json
	-$(PY) benchmarks/reliability.py --json bench-out/reliability.json
	-$(PY) benchmarks/chaos.py
	-$(PY) benchmarks/apply_async.py --json bench-out/apply_async.json
	-$(PY) benchmarks/stats_overhead.py --json bench-out/stats_overhead.json
	-$(PY) benchmarks/w3s_skew.py --rounds 6 --take-back-ab --json bench-out/w3s.json
	-$(PY) benchmarks/sim_takeback.py
	-$(PY) benchmarks/sim_takeback.py --chunk-overhead 0.3 --latencies 0.1,1
	-$(PY) benchmarks/many_workers.py --json bench-out/many_workers.json
	-$(PY) benchmarks/cluster.py --json bench-out/cluster.json

clean:
	rm -rf $(VENV) .venv-3.* build dist src/*.egg-info .pytest_cache .ruff_cache
