# The two commands of the README. Both create .venv when it is missing and install what is needed.
PY ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# Debian's speech synthesizers: the speech corpus (headway data speech) and its tests speak with them;
# chromium: the browser tests drive the demo page in it (tests/test_browser.py)
SYSTEM_DEPS := espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts chromium

.PHONY: demo test install clean system-deps

# Quick when all are there (dpkg -s each); installs the missing ones with apt-get, as root or through sudo.
system-deps:
	@command -v dpkg >/dev/null || { echo "make: no dpkg here; install $(SYSTEM_DEPS) yourself" >&2; exit 0; }; \
	missing=$$(for p in $(SYSTEM_DEPS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "make: installing" $$missing; \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -q $$missing; \
	fi

# The system packages come first (order-only: checked every time, never a reason to reinstall).
$(STAMP): pyproject.toml | system-deps
	@test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q -U pip
	$(VENV)/bin/pip install -q -e '.[test,lerobot,ray]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/headway demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
