# The two commands a new user types: `make demo` and `make test`. Both create .venv if missing and
# install into it; a stamp keyed on a hash of pyproject.toml + constraints/cpu.txt skips reinstalling.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HASH := $(shell cat pyproject.toml constraints/cpu.txt | sha256sum | cut -c1-16)
STAMP := $(VENV)/.stamp-$(HASH)
# `fl` (flwr) joins the default once federated training uses it; `make EXTRAS=test,fl` installs it now.
EXTRAS ?= test

.PHONY: install browser demo test bench clean-venv

$(STAMP): pyproject.toml constraints/cpu.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -c constraints/cpu.txt -e '.[$(EXTRAS)]'
	@rm -f $(VENV)/.stamp-*
	@touch $@

install: $(STAMP)

demo: install
	$(VENV)/bin/medagent demo

# The report's browser test (tests/test_report_browser.py) drives Debian's chromium: installed here when missing
# and apt-get is there (quiet; nothing happens when chromium is already on PATH).
browser:
	@command -v chromium >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "could not install chromium with apt-get: tests/test_report_browser.py will fail"

test: install browser
	$(VENV)/bin/pytest -q --durations=25 -p no:cacheprovider

bench: install
	$(PY) bench/run_all.py --quick

clean-venv:
	rm -rf $(VENV)
