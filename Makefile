# mmjax: `make train` trains and evaluates the default CLIP on the synthetic shapes data;
# `make test` runs the test suite. Both create .venv and install the project on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= configs/clip_tiny.py
WORKDIR ?= runs/$(basename $(notdir $(CONFIG)))
ARGS ?=
PYTEST_ARGS ?=

FUSION_CONFIGS := late_fusion_vqa_tiny early_fusion_vqa_tiny albef_tiny coca_tiny

.PHONY: install train eval data fusion test test-slow test-all clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,interop-test]"
	touch $(STAMP)

install: $(STAMP)

train: install
	$(PY) train.py --config $(CONFIG) --workdir $(WORKDIR) $(ARGS)

eval: install
	$(PY) eval.py --config $(CONFIG) --workdir $(WORKDIR) $(ARGS)

# The four fusion families on the same VQA questions (about 40 minutes on 2 CPU cores).
fusion: install
	for c in $(FUSION_CONFIGS); do \
	  $(PY) train.py --config configs/$$c.py --workdir runs/$$c && \
	  $(PY) eval.py --config configs/$$c.py --workdir runs/$$c --config.eval.split=compositional_test \
	  || exit 1; \
	done
	$(PY) -m mmjax.evaluation.compare_runs $(addprefix runs/,$(FUSION_CONFIGS))

data: install
	$(PY) -m mmjax.data.build_shapes --data_dir data --config 48

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-slow: install
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

test-all: install
	$(PY) -m pytest -q -m "slow or not slow" $(PYTEST_ARGS)

clean:
	rm -rf runs .pytest_cache
