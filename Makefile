# The two commands a user needs: `make demo` and `make test`. Both set everything up first.
VENV   ?= .venv
STAMP  := $(VENV)/.edgeasr-installed
PY     := $(VENV)/bin/python
# One BLAS/OpenMP thread per process: on 2 shared cores, two threads degrade badly.
export OMP_NUM_THREADS ?= 1

.PHONY: setup demo test clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py edgeasr/_native.c scripts/setup.sh scripts/system-packages.txt
	bash scripts/setup.sh

demo: setup
	$(VENV)/bin/edgeasr demo

test: setup
	$(PY) -m pytest

clean:
	rm -rf $(VENV) .venv-piper .pytest_cache build *.egg-info
	find edgeasr -name "*.so" -delete
