# The README's two commands: `make run` and `make test`. Everything they need is installed here.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
CONFIG ?= config.yaml

.PHONY: install install-test run test lint bench clean

$(VENV)/bin/activate:
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

test: install-test
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

lint: install-test
	$(VENV)/bin/ruff check .

# A benchmark, not a test (CI does not run it): the gateway's own cost next to mitmproxy's floor,
# written to bench/results/latest.md. The HAProxy scale run needs haproxy (`python -m bench --scale`
# installs it with apt-get); without it, that part is skipped and the report says why.
bench: install-test
	$(PY) -m bench

clean:
	rm -rf $(VENV)
