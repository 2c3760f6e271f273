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
SLOWEST   := notebooks/06_training_recipe.ipynb notebooks/solutions/06_training_recipe_solutions.ipynb
NOTEBOOKS := $(SLOWEST) $(filter-out $(SLOWEST),$(NOTEBOOKS))

SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: lab test course setup browser clean

setup: $(STAMP)

# --no-compile: Python byte-compiles on first import only the modules that are used (~30 s less set-up).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-compile $(TORCH)
	$(PY) -m pip install --quiet --no-compile -e ".[test]"
	$(PY) -m ipykernel install --sys-prefix --name decidiff-lab --display-name "decidiff-lab" >/dev/null
	touch $(STAMP)

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

# Debian's Chromium for the JupyterLab browser test (Playwright drives it; no browser download).
browser:
	@command -v chromium >/dev/null || $(SUDO) apt-get install -y -q chromium >/dev/null \
		|| ($(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q chromium >/dev/null) \
		|| echo "chromium not installed: the browser test will be skipped"

# Unit tests and notebooks two at a time. Each notebook kernel gets one thread (NOTEBOOK_ENV): two
# kernels of two threads on two cores run several times slower, and the thread count can change the
# last bits of a float, so `course` writes the outputs under the same setting.
NOTEBOOK_ENV := HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
test: $(STAMP) browser
	HF_HUB_OFFLINE=1 $(PY) -m pytest -n 2 --dist loadscope tests
	$(NOTEBOOK_ENV) $(PY) -m pytest -n 2 --dist loadfile --nbval $(NOTEBOOKS)

# Execute every notebook headless on the offline default, writing outputs in place. One at a time,
# on an otherwise idle machine: the committed timings are read by learners, so nothing competes.
course: $(STAMP)
	@for nb in $(NOTEBOOKS); do \
		echo "executing $$nb"; \
		$(NOTEBOOK_ENV) $(VENV)/bin/jupyter nbconvert --log-level WARN --to notebook --execute --inplace \
			--ExecutePreprocessor.kernel_name=decidiff-lab --ExecutePreprocessor.timeout=900 "$$nb" || exit 1; \
	done

clean:
	rm -rf $(VENV) build .pytest_cache
