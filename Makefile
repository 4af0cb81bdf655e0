# Two entry points: `make demo` (the main job on the embedded demo corpus) and `make test`.
# Both create .venv and install what they need; no network beyond PyPI is used.
# `make grid-demo` runs the small five-seed-grid example, examples/grid_demo.yaml.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline
DEMO_LANG ?= es
DEMO_DIR ?= outputs/demo
# auto: bf16 autocast where the CPU has AMX or AVX512-BF16 (said in the output), fp32 elsewhere
DEMO_PRECISION ?= auto

# The model folder examples/grid_demo.yaml names (its model_name_or_path).
GRID_DEMO_MODEL := .cache/e5-small-demo-es
GRID_DEMO_DIR := outputs/grid-demo

.PHONY: install test test-fast lint demo grid-demo clean

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
	$(OFFLINE) $(PY) demo.py --target_lang $(DEMO_LANG) --output_dir $(DEMO_DIR) --precision $(DEMO_PRECISION)

# e5-small converted offline, vocabulary pruned to the grid's corpus; renamed into place once complete,
# so an interrupted conversion is redone rather than taken for a model.
$(GRID_DEMO_MODEL): | $(STAMP)
	rm -rf $@.tmp
	$(OFFLINE) $(PY) -m hf_xladjust.offline_model --output_dir $@.tmp --vocab_corpus demo_data/en-es.txt
	mv $@.tmp $@

# The grid (NLI, Spanish, 2 seeds; reruns only what is unfinished) and its Table-2-shaped report.
grid-demo: $(STAMP) | $(GRID_DEMO_MODEL)
	$(OFFLINE) $(PY) -m hf_xladjust.experiments examples/grid_demo.yaml
	$(OFFLINE) $(PY) -m hf_xladjust.report $(GRID_DEMO_DIR)

clean:
	rm -rf $(DEMO_DIR) $(GRID_DEMO_DIR) .pytest_cache
