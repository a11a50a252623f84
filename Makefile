# One command from a machine that has only Python: `make test`.
# On a CUDA machine, offline, with the machine's own Python (no venv, no pip): `make gpu-check`
# (build + GPU tests + CUDA graphs + kernel sweep + benchmarks) or `make test-gpu` (tests only).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0

.PHONY: test venv install test-gpu gpu-check aot bench demo clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

venv: $(PY)
	@# Keep an existing torch (CPU or CUDA build). Otherwise `pip install torch==X` takes whatever the
	@# configured index serves: on an ordinary Linux x86-64 machine PyPI's default wheel is the CUDA
	@# build (several GB of nvidia-* wheels); CPU-only machines point pip at the CPU wheel (here: a
	@# CPU wheel on local disk; elsewhere `PIP_INDEX_URL=https://download.pytorch.org/whl/cpu`).
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install torch==$(TORCH_VERSION)
	$(PY) -m pip install -r requirements-dev.txt

install: venv
	@echo "building the C++ extension (about 5 minutes on 2 cores; pip prints nothing meanwhile)"
	$(PY) -m pip install --no-build-isolation --no-deps -e .

# The compile lane (tests/test_aot_compile.py) writes benches/results/aot-sm90.json / aot-sm80.json.
test: install
	INFOGAIN_AOT_RESULTS=benches/results $(PY) -m pytest -q tests

# The compile lane alone: every Triton kernel for sm_90 and sm_80, budgets checked, JSON written.
aot: install
	$(PY) -m infogain_kernels._aot --out benches/results

# GPU targets: the machine's Python (CUDA torch), no venv, no pip, no network.
GPU_ENV := PYTHONPATH=$(CURDIR):$(CURDIR)/python_api$(if $(PYTHONPATH),:$(PYTHONPATH))

# INFOGAIN_BACKEND is cleared: a leftover `reference` would send CUDA tensors to the torch reference.
test-gpu:
	@if [ -n "$$INFOGAIN_BACKEND" ]; then echo "test-gpu: ignoring INFOGAIN_BACKEND=$$INFOGAIN_BACKEND (the GPU lane tests the default Triton path)" >&2; fi
	$(PYTHON) setup.py build_ext --inplace --force
	env -u INFOGAIN_BACKEND $(GPU_ENV) $(PYTHON) -m pytest -q -m gpu tests

gpu-check:
	env -u INFOGAIN_BACKEND $(GPU_ENV) $(PYTHON) -m infogain gpu-check

# Regenerates the tracked results in benches/results/ (the scripts alone write to the working directory).
bench: install
	$(PY) benches/bench_ops.py --update-results
	$(PY) benches/bench_kv.py --update-results
	$(PY) benches/bench_models.py --update-results $(if $(shell $(PY) -c "import torch; print(int(torch.cuda.is_available()))" | grep 1),,--small)
	$(PY) benches/bench_eis.py --update-results
	$(PY) benches/bench_nucleus.py --update-results
	$(PY) benches/bench_lm_head.py --update-results $(if $(shell $(PY) -c "import torch; print(int(torch.cuda.is_available()))" | grep 1),,--small)
	$(PY) -m infogain bench --update-results

demo: install
	$(PY) -m infogain demo

clean:
	rm -rf build *.egg-info infogain_kernels/_C*.so
