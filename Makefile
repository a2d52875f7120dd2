# The two set-up commands of the README (`make demo`, `make test`) install what they need first.
PYTHON ?= python3
export PIP_ROOT_USER_ACTION := ignore
export PIP_DISABLE_PIP_VERSION_CHECK := 1
DEMO_OUT ?= demo-output

.PHONY: install demo test completions bench

# torch: keep the user's own build (a GPU cluster's); else the pinned CPU build, before the
# project, so that pip does not pull gigabytes of CUDA wheels.
install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q torch==2.13.0
	@$(PYTHON) -m pip install -q -e ".[test]"

demo: install
	sits demo --out $(DEMO_OUT) --overwrite

test: install
	$(PYTHON) -m pytest -q

completions: install
	$(PYTHON) -m sitscli.cli.completions completions

# Speed and memory figures as JSON in bench/out/ (reduced sizes that fit a 2-core CPU; see bench/README.md
# for the full-size runs on a GPU).
bench: install
	@mkdir -p bench/out
	$(PYTHON) bench/train_speed.py --threads 1 > bench/out/train_speed.json
	$(PYTHON) bench/predict_map.py --threads 1 --size 256 --rss-sizes 256,512 --block 128 --dates 20 \
		--hidden 32 --layers 1 --heads 2 > bench/out/predict_map.json

