# decidiff-lab: `make lab` to learn, `make test` to check. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The CPU build of torch lies on this machine's disk; installing it first stops any later
# requirement from pulling a multi-GB CUDA build. Elsewhere, override: make TORCH="torch" ...
TORCH  ?= torch==2.13.0
NOTEBOOKS := $(wildcard notebooks/*.ipynb notebooks/solutions/*.ipynb)
# The two that train U-Nets take a third of the time: started first, the rest fill in beside them.
TRAINING  := notebooks/07_training_recipe.ipynb notebooks/solutions/07_training_recipe_solutions.ipynb
NOTEBOOKS := $(TRAINING) $(filter-out $(TRAINING),$(NOTEBOOKS))

SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: lab test test-portable check test-floor test-replica course setup browser clean bench-agreement

setup: $(STAMP)

# torch with pip (the CPU build on this machine's disk is where pip looks, not uv), then the rest with uv,
# which keeps that torch and installs in seconds what pip takes a minute for. No byte-compiling: Python
# compiles on first import only the modules that are used.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-compile $(TORCH) uv
	$(VENV)/bin/uv pip install --python $(PY) --quiet -e ".[lab,deploy,test]"
	$(PY) -m ipykernel install --sys-prefix --name decidiff-lab --display-name "decidiff-lab" >/dev/null
	touch $(STAMP)

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

# Debian's Chromium for the JupyterLab browser test (Playwright drives it; no browser download).
browser:
	@command -v chromium >/dev/null || $(SUDO) apt-get install -y -q chromium >/dev/null \
		|| ($(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q chromium >/dev/null) \
		|| echo "chromium not installed: the browser test will be skipped"

# Unit tests and notebooks side by side, the notebooks under strict nbval. Each notebook kernel gets
# KERNEL_THREADS threads (two kernels of two threads on two cores ran 2.6x slower: 17 min). Strict
# outputs must not depend on it: `make test KERNEL_THREADS=2` must pass too (README, "Testing").
KERNEL_THREADS ?= 1
# As many workers as the cores hold kernels: `make test KERNEL_THREADS=2` runs one at a time here.
WORKERS        ?= $(shell echo $$(( $$(nproc) / $(KERNEL_THREADS) > 1 ? $$(nproc) / $(KERNEL_THREADS) : 1 )))
NOTEBOOK_ENV   := HF_HUB_OFFLINE=1 OMP_NUM_THREADS=$(KERNEL_THREADS)
NBVAL          := -m pytest -n $(WORKERS) --dist loadfile --nbval
# Tests marked `measurement` assert a speed: they need a quiet machine, so CI leaves them to bench-agreement.
FAST_UNIT      := -m pytest -n $(WORKERS) --dist loadscope -m "not slow and not measurement" tests
# One pytest run for both, so the two workers stay busy to the end: the training notebooks first, the
# unit tests (one torch thread per worker, tests/conftest.py) fill in beside them.
test: $(STAMP) browser
	$(NOTEBOOK_ENV) $(PY) $(NBVAL) -m "not measurement" $(NOTEBOOKS) tests

# The notebooks on "another CPU": oneDNN capped at SSE4.1 runs other convolution and matmul kernels than
# this machine's AVX2 ones (ATen's own kernels are left as they are: ATEN_CPU_CAPABILITY=default makes the
# training notebooks several times slower). 07, whose training run must still learn as its cells assert, and
# 00, whose gallery embeds its images. 07's solutions train the same loop at smaller sizes, so they add time,
# not coverage. The others only infer: 01, 02 and 04 passed strict nbval this way when #14 measured them.
PORTABLE := notebooks/07_training_recipe.ipynb notebooks/00_quickstart.ipynb
test-portable: $(STAMP)
	$(NOTEBOOK_ENV) ONEDNN_MAX_CPU_ISA=SSE41 $(PY) $(NBVAL) $(PORTABLE)

# Fast iteration: the unit tests not marked slow, no notebooks.
check: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) $(FAST_UNIT)

# The unit tests at the minimum versions pyproject.toml declares: its `>=` floors become `name==floor`
# constraints (scripts/floor_constraints.py writes tests/floor-constraints.txt), installed in .venv-floor,
# rebuilt from scratch whenever pyproject.toml changes. torch stays $(TORCH): the only build on this
# machine's disk is 2.13.0, so the floor run tests torch 2.13.0, not the declared torch>=2.1.
FLOOR_VENV   := .venv-floor
FLOOR_PY     := $(FLOOR_VENV)/bin/python
FLOOR_STAMP  := $(FLOOR_VENV)/.installed
FLOOR_CONSTR := tests/floor-constraints.txt
$(FLOOR_STAMP): pyproject.toml scripts/floor_constraints.py
	rm -rf $(FLOOR_VENV)
	$(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_PY) scripts/floor_constraints.py pyproject.toml $(FLOOR_CONSTR)
	$(FLOOR_PY) -m pip install --quiet --no-compile $(TORCH) uv
	$(FLOOR_VENV)/bin/uv pip install --python $(FLOOR_PY) --quiet -e ".[lab,test]" -c $(FLOOR_CONSTR)
	$(FLOOR_PY) -m ipykernel install --sys-prefix --name decidiff-lab --display-name "decidiff-lab" >/dev/null
	touch $(FLOOR_STAMP)

# Not the slow tests: they rerun in fresh interpreters or training loops the same library calls the
# fast ones make, and the floors are about those calls.
test-floor: $(FLOOR_STAMP) browser
	HF_HUB_OFFLINE=1 $(FLOOR_PY) $(FAST_UNIT)

# Execute every notebook headless on the offline default and write the outputs in place, with the
# settings `make test` compares under: WORKERS at a time, KERNEL_THREADS threads each. `make course
# NOTEBOOKS=notebooks/01_vae.ipynb` re-executes one.
course: $(STAMP)
	@printf '%s\n' $(NOTEBOOKS) | xargs -P $(WORKERS) -I{} sh -c 'echo "executing {}"; $(NOTEBOOK_ENV) \
		$(VENV)/bin/jupyter nbconvert --log-level WARN --to notebook --execute --inplace \
		--ExecutePreprocessor.kernel_name=decidiff-lab --ExecutePreprocessor.timeout=900 "{}"'

# The GPU path without a GPU or the hub: every notebook on the replica of the real hub repos
# (tests/replica_hub.py: real ids, pinned commits, layout and JSON files, tiny random weights), the preset
# forced to deci-v2, and to deci-v1 in the notebooks that compare architectures. A cell error fails; outputs
# are not compared (random weights draw noise), the notebooks assert the real-path contract. Built with 16
# latent cells a side (128 px images; every U-Net still downsamples to 2x2): the real 64 (512 px, what
# tests/test_real_path.py loads) takes 5x longer than 32 on 2 cores (00: 189 s vs 38 s); in quiet fresh-clone
# CI runs both passes took 699 s at 32 and 322 s at 16. The two training notebooks are left out: they train nano models whatever the preset (7.5 and 5.3 minutes on the replica,
# passed by hand), and their one preset-dependent call, comparison_pair, runs in every other notebook.
REPLICA     := build/replica-hf-home
REPLICA_ENV := HF_HOME=$(abspath $(REPLICA)) HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
COMPARING   := notebooks/00_quickstart.ipynb notebooks/03_unet_nas.ipynb
ON_REPLICA  := $(filter-out $(TRAINING),$(NOTEBOOKS))
$(REPLICA)/.built: tests/replica_hub.py decidiff_lab/presets.py decidiff_lab/hub.py decidiff_lab/architectures.py $(STAMP)
	rm -rf $(REPLICA)
	$(PY) tests/replica_hub.py $(REPLICA) --sample-size 16
	touch $@

test-replica: $(STAMP) $(REPLICA)/.built
	$(REPLICA_ENV) DECIDIFF_LAB_PRESET=deci-v2 $(PY) -m pytest -n 2 --dist loadfile --nbval-lax $(ON_REPLICA)
	$(REPLICA_ENV) DECIDIFF_LAB_PRESET=deci-v1 $(PY) -m pytest -n 2 --dist loadfile --nbval-lax $(COMPARING)

# Not CI (it measures; run it on a quiet machine): two `decidiff-lab bench` runs agree within 5%, and
# with a plain-diffusers interleaved timing within 15% (scripts/bench_agreement.py); then the tests marked
# `measurement`, which assert a speed.
bench-agreement: $(STAMP)
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(PY) scripts/bench_agreement.py --repeats 10
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m measurement tests

clean:
	rm -rf $(VENV) $(FLOOR_VENV) build .pytest_cache
