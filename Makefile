# One command from a machine that has only Python: `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0

.PHONY: test venv install test-gpu bench demo clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

venv: $(PY)
	@# Keep an existing torch (CPU or CUDA build); otherwise take the CPU wheel, never a CUDA one.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install torch==$(TORCH_VERSION)
	$(PY) -m pip install -r requirements-dev.txt

install: venv
	$(PY) -m pip install --no-build-isolation --no-deps -e .

test: install
	$(PY) -m pytest -q tests

test-gpu: install
	$(PY) -m pytest -q -m gpu tests

# Regenerates the tracked results in benches/results/ (the scripts alone write to the working directory).
bench: install
	$(PY) benches/bench_ops.py --update-results
	$(PY) benches/bench_kv.py --update-results
	$(PY) benches/bench_models.py --update-results $(if $(shell $(PY) -c "import torch; print(int(torch.cuda.is_available()))" | grep 1),,--small)
	$(PY) benches/bench_eis.py --update-results
	$(PY) -m infogain bench --update-results

demo: install
	$(PY) -m infogain demo

clean:
	rm -rf build *.egg-info infogain_kernels/_C*.so
