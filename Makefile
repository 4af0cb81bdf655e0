# Two entry points: `make demo` (the main job on the embedded demo corpus) and `make test`.
# Both create .venv and install what they need; no network beyond PyPI is used.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline
DEMO_LANG ?= es
DEMO_DIR ?= outputs/demo

.PHONY: install test test-fast lint demo clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[offline,fast_align,test]"
	touch $(STAMP)

install: $(STAMP)

# The whole suite, slow real-data checks included (they skip when ../shared/data is absent).
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(OFFLINE) $(PY) -m pytest -q tests

# Without the slow real-data checks.
test-fast: $(STAMP)
	$(OFFLINE) $(PY) -m pytest -q -m "not slow" tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .

demo: $(STAMP)
	$(OFFLINE) $(PY) demo.py --target_lang $(DEMO_LANG) --output_dir $(DEMO_DIR)

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
