# immunity: two commands on a fresh Debian/Ubuntu machine.
#   make demo   installs what is missing, then runs the demo (the main job, embedded defaults)
#   make test   installs what is missing, then scripts/check and the whole test suite
# `make setup` is what both go through: afterwards .venv/bin/immunity works.

PY ?= python3
VENV := .venv
UV := $(VENV)/bin/uv
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_RUNTIME := haproxy
APT_TEST := haproxy openssh-server prometheus postgresql chromium tmux

.PHONY: setup setup-test demo test test-quick check bench clean

# The Python environment, from the committed lock file.
$(VENV)/.installed: pyproject.toml requirements.lock
	@command -v $(PY) >/dev/null || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q python3 python3-venv; }
	@[ -x $(VENV)/bin/python ] || $(PY) -m venv $(VENV) || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q python3-venv && $(PY) -m venv $(VENV); }
	$(VENV)/bin/python -m pip install -q --upgrade pip uv
	$(UV) pip sync -q --compile-bytecode --python $(VENV)/bin/python requirements.lock
	$(UV) pip install -q --python $(VENV)/bin/python --no-deps -e .
	@touch $@

# OS packages, installed only when their binaries are absent.
apt-runtime:
	@command -v haproxy >/dev/null || { $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $(APT_RUNTIME); }

apt-test: apt-runtime
	@{ command -v haproxy >/dev/null && [ -x /usr/sbin/sshd ] && command -v prometheus >/dev/null && \
	   ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && command -v chromium >/dev/null && command -v tmux >/dev/null; } || \
	  { $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $(APT_TEST); }

setup: apt-runtime $(VENV)/.installed

setup-test: setup apt-test

demo: setup
	$(VENV)/bin/immunity demo

check: setup
	scripts/check

# Bytecode is compiled ahead (the packages at install, src here): where PYTHONDONTWRITEBYTECODE
# is set, as on our CI machine, every process the tests start (each immunity command, sandbox
# host and load generator) would otherwise compile its imports from source again: 1.15 ->
# 0.55 s of CPU for one `immunity status`.
# Four workers on two cores: the whole-deployment tests spend most of their time waiting on
# bakes and drains (a 2-worker run used 12.4 min of CPU in 14.2 min of wall time, 0.87 of
# the 2 cores). With 1,179 tests three workers took 11 min 57 s of pytest on a fresh clone
# (16.4 min of CPU in 12.8 min); four took 9 min 26 s, every test passing.
# Whole files go to the workers (module-scoped sandboxes stay in one process), longest
# first: tests/conftest.py orders them from tests/durations.json, and --no-loadscope-reorder
# keeps that order (xdist would otherwise hand out the files with most tests first, which
# left minute-long e2e files for the end). Refresh the figures after a run with
# --junitxml=FILE: `$(VENV)/bin/python scripts/suite_durations.py FILE`.
test: setup-test
	scripts/check
	$(VENV)/bin/python -m compileall -q -j 0 src
	$(VENV)/bin/pytest -q -n 4 --dist loadfile --no-loadscope-reorder

test-quick: setup-test
	$(VENV)/bin/python -m compileall -q -j 0 src
	$(VENV)/bin/pytest -q -m "not slow"

bench: setup
	$(VENV)/bin/immunity bench rollout
	$(VENV)/bin/immunity bench judge

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
