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
# Test files run in parallel (pytest-xdist; each file's tests stay on one worker, so its module
# fixtures are built once), one worker more than there are cores, up to 4: a worker often waits
# (on a train.py subprocess it started, on XLA's single-threaded compiler) and the extra one keeps
# the cores busy meanwhile. TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= $(shell $(PYTHON) -c "import os; print(min(4, len(os.sched_getaffinity(0)) + 1))" 2>/dev/null || echo 3)
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)
# mimalloc (a dependency on Linux, from PyPI) keeps the memory XLA:CPU frees between steps instead
# of returning it to the kernel: 1.2-1.3x faster CPU training steps (mmjax/training/allocator.py).
# train.py and eval.py preload it themselves; pytest and the benchmarks get it here.
RUN = LD_PRELOAD="$$($(PY) -m mmjax.training.allocator)" $(PY)

FUSION_CONFIGS := late_fusion_vqa_tiny early_fusion_vqa_tiny albef_tiny coca_tiny

.PHONY: install train eval data digits detection fusion media dalle maskgit bench docs docs-check test test-slow test-all clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,interop-test,docs]"
	touch $(STAMP)

install: $(STAMP)

train: install
	$(RUN) train.py --config $(CONFIG) --workdir $(WORKDIR) $(ARGS)

eval: install
	$(RUN) eval.py --config $(CONFIG) --workdir $(WORKDIR) $(ARGS)

# Open-vocabulary detection (OWL-ViT) from clip_tiny's towers: clip_tiny is trained first if
# runs/clip_tiny has no checkpoint; then the detector trains and is evaluated on the test and
# compositional_test splits (runs/detection_tiny/results.json, detections_*.png).
detection: install
	test -n "$$(ls runs/clip_tiny/checkpoints 2>/dev/null)" || $(RUN) train.py --config configs/clip_tiny.py --workdir runs/clip_tiny
	$(RUN) train.py --config configs/detection_tiny.py --workdir runs/detection_tiny $(ARGS)

# The four fusion families on the same VQA questions (about 40 minutes on 2 CPU cores).
fusion: install
	for c in $(FUSION_CONFIGS); do \
	  $(RUN) train.py --config configs/$$c.py --workdir runs/$$c && \
	  $(RUN) eval.py --config configs/$$c.py --workdir runs/$$c --config.eval.split=compositional_test \
	  || exit 1; \
	done
	$(PY) -m mmjax.evaluation.compare_runs $(addprefix runs/,$(FUSION_CONFIGS))

# Video and audio (about 50 minutes on 2 CPU cores): video-text and audio-text CLIPs, then the
# three-way model without and with the video-audio pair in its loss (runs/*/results.json).
media: install
	$(RUN) train.py --config configs/video_clip_tiny.py --workdir runs/video_clip_tiny $(ARGS)
	$(RUN) train.py --config configs/audio_clip_tiny.py --workdir runs/audio_clip_tiny $(ARGS)
	$(RUN) train.py --config configs/triple_tiny.py --workdir runs/triple_tiny $(ARGS)
	$(RUN) train.py --config configs/triple_tiny.py:video_audio --workdir runs/triple_tiny_video_audio $(ARGS)

# Text-to-image, DALL-E's two stages (about 25 minutes on 2 CPU cores): the clip_tiny judge if
# runs/clip_tiny has no checkpoint, the VQ-VAE tokenizer, then the prior over its codes, judged by
# the scene parser and the CLIP (runs/dalle_tiny/results.json, samples_test.png).
dalle: install
	test -n "$$(ls runs/clip_tiny/checkpoints 2>/dev/null)" || $(RUN) train.py --config configs/clip_tiny.py --workdir runs/clip_tiny
	$(RUN) train.py --config configs/vq_tiny.py --workdir runs/vq_tiny $(ARGS)
	$(RUN) train.py --config configs/dalle_tiny.py --workdir runs/dalle_tiny $(ARGS)

# MaskGIT's parallel sampler over the same tokenizer (after `make dalle`; runs/maskgit_tiny).
maskgit: install
	test -n "$$(ls runs/vq_tiny/checkpoints 2>/dev/null)" || $(MAKE) dalle
	$(RUN) train.py --config configs/maskgit_tiny.py --workdir runs/maskgit_tiny $(ARGS)

# Every benchmark (about 25 minutes on 2 CPU cores): rewrites BENCHMARKS.md's tables and
# docs/bench/*.png; `make bench ARGS="--only step peer"` runs some suites only.
bench: install
	$(PY) bench/run_all.py $(ARGS)

data: install
	$(PY) -m mmjax.data.build_shapes --data_dir data --config 48

# The real-image benchmark: scikit-learn's 1,797 handwritten digits, captioned from their labels,
# built as a folder dataset (a quarter held out) and a tiny CLIP trained and evaluated on it.
DIGITS_DATA ?= data
digits: install
	test -f $(DIGITS_DATA)/digits_folder/captions.jsonl || $(PY) -m mmjax.data.digits --output $(DIGITS_DATA)/digits_folder
	test -f $(DIGITS_DATA)/digits/summary.json || $(PY) -m mmjax.data.build --input $(DIGITS_DATA)/digits_folder \
	  --output $(DIGITS_DATA) --name digits --image-size 32 --validation-fraction 0.25 --text-len 16 --vocab-size 256
	$(RUN) train.py --config configs/clip_digits.py --workdir runs/clip_digits --config.data.data_dir=$(DIGITS_DATA) $(ARGS)

# The docs site into site/ (strict: a broken link, page or nav entry fails the build).
docs: install
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

# Every page rendered in headless Chromium (apt install chromium): screenshots in
# site-screenshots/, and a failure for math not typeset, code not highlighted or an image missing.
# Offline: make docs-check ARGS="--mathjax /usr/share/javascript/mathjax/MathJax.js"
docs-check: docs
	$(PY) docs/render_check.py --site site --out site-screenshots $(ARGS)

test: install
	$(RUN) -m pytest -q $(XDIST) $(PYTEST_ARGS)

test-slow: install
	$(RUN) -m pytest -q $(XDIST) -m slow $(PYTEST_ARGS)

test-all: install
	$(RUN) -m pytest -q $(XDIST) -m "slow or not slow" $(PYTEST_ARGS)

clean:
	rm -rf runs .pytest_cache
