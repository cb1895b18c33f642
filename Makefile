# The README's two commands: `make run` and `make test`. Everything they need is installed here.
# Python 3.13 (mitmproxy 12.3 needs >= 3.12; this machine kind's python3 is 3.11). .python-version
# names it for pyenv; the Makefile finds it without pyenv on PATH too: a pyenv-installed 3.13/3.12
# first, else python3.13/python3.12 on PATH.
PYTHON ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.13*/bin/python3 $(HOME)/.pyenv/versions/3.12*/bin/python3) \
	$(shell command -v python3.13 python3.12 2>/dev/null))
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
CONFIG ?= config.yaml

.PHONY: install install-test clients run test lint bench clean redis-server cluster

# The dashboard's browser test (tests/e2e/test_dashboard.py) drives Debian's Chromium through
# Playwright -- never a downloaded browser. Pinned to the version it was tested with; Debian drops
# superseded security builds from its archive, so when that one is gone the current one is installed
# (and the Makefile says so). Override with `make test CHROMIUM_VERSION=...`.
CHROMIUM := /usr/bin/chromium
CHROMIUM_VERSION ?= 156.0.8078.129-1~deb12u1
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

# A venv made by another Python (an older checkout's 3.11) is rebuilt.
$(VENV)/bin/activate: .python-version
	@test -n "$(PYTHON)" || { echo "Python 3.12+ not found: install 3.13 (pyenv install 3.13.0) or set PYTHON=..."; exit 1; }
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# pyproject.toml is the one list of dependencies; this prints it (with the test extra when asked).
DEPS = $(PY) -c "import sys, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
	print('\n'.join(p['dependencies'] + (p['optional-dependencies']['test'] if sys.argv[1:] else [])))"

# Runtime dependencies only, resolved in one go (see pyproject.toml for why the pins).
$(VENV)/.installed: pyproject.toml $(VENV)/bin/activate
	$(DEPS) > $(VENV)/requirements.txt
	$(PIP) install -q -r $(VENV)/requirements.txt
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/bin/activate
	$(DEPS) test > $(VENV)/requirements-test.txt
	$(PIP) install -q -r $(VENV)/requirements-test.txt
	touch $(VENV)/.installed $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

run: install
	$(VENV)/bin/mitmdump -s run.py --set config=$(CONFIG)

# The real CLIs the end-to-end tests drive (tests/e2e/test_cli_*.py), pinned in clients/package-lock.json and
# installed project-locally (never -g). Each binary must answer --version, or the install is a failure here.
CLIENTS := clients/node_modules
CLAUDE_CODE_VERSIONS := current 2.1.141

$(CLIENTS)/.installed: clients/package.json clients/package-lock.json
	cd clients && npm ci --no-audit --no-fund
	$(foreach v,$(CLAUDE_CODE_VERSIONS),$(CLIENTS)/claude-code-$(v)/bin/claude.exe --version &&) \
		$(CLIENTS)/.bin/gemini --version && $(CLIENTS)/.bin/codex --version
	touch $@

clients: $(CLIENTS)/.installed

$(CHROMIUM):
	@command -v apt-get >/dev/null || { echo "install Chromium from your OS packages (tests/e2e/test_dashboard.py needs $(CHROMIUM))"; exit 1; }
	$(SUDO) apt-get update -q
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium=$(CHROMIUM_VERSION) \
		|| { echo "chromium $(CHROMIUM_VERSION) is no longer in the archive; installing the current package"; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

# The shared-state tests start a real redis-server on a free loopback port (no persistence).
redis-server:
	@command -v redis-server >/dev/null || { echo "installing redis-server with apt-get (the tests start one on loopback)"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq redis-server; }

test: install-test $(CLIENTS)/.installed $(CHROMIUM) redis-server
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

# N gateway processes + Redis + HAProxy on loopback (README "Running several processes").
PROCESSES ?= 2
cluster: install redis-server
	@command -v haproxy >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq haproxy; }
	$(PY) deploy/cluster.py --processes $(PROCESSES) --config $(CONFIG)

lint: install-test
	$(VENV)/bin/ruff check .

# A benchmark, not a test (CI does not run it): the gateway's own cost next to mitmproxy's floor,
# written to bench/results/latest.md. The HAProxy scale run needs haproxy (`python -m bench --scale`
# installs it with apt-get); without it, that part is skipped and the report says why.
bench: install-test
	$(PY) -m bench

clean:
	rm -rf $(VENV)
