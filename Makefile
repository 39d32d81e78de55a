# Two entry points: `make repro` (the pipeline on the embedded default) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# intel-npu-acceleration-library needs openvino 2024.4 and numpy < 2: it lives in an environment of its own.
NPU_VENV ?= .venv-npu
export AIPC_NPU_VENV := $(abspath $(NPU_VENV))
export DVC_NO_ANALYTICS := 1

.PHONY: setup repro test clean
setup: $(VENV)/.installed $(NPU_VENV)/.aipc-npu-ready

# torch first, pinned to the CPU build where one is at hand (`pip install torch==2.13.0`); optimum-intel last and
# without its dependencies: it requires torchvision, which would pull a CUDA torch of several GB that the OpenVINO
# export never imports. Everything else optimum-intel needs is in pyproject.toml. Last, the .pth line that makes every
# DVC run in the venv write its lock files whole or not at all (pipeline/dvcpatch.py).
$(VENV)/.installed: pyproject.toml pipeline/dvcpatch.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps "optimum-intel==2.2.0"
	$(BIN)/python -c "from pipeline import dvcpatch; print(dvcpatch.install_pth())"
	touch $@

# Builds the library offline from its sdist against the openvino 2024.4 wheel (pipeline/backends/npu_library/env/create.py says how).
$(NPU_VENV)/.aipc-npu-ready: pipeline/backends/npu_library/env/create.py
	$(PYTHON) pipeline/backends/npu_library/env/create.py $(NPU_VENV)

# dvc runs each stage's `aipc ...` through the shell, so the venv goes first on PATH.
# The toolchain check first: an exporter upgrade must go through `aipc toolchain --write`, which reruns its exports.
# `aipc repro`: models/<model>/{dvc.yaml,build.yaml} from params.yaml, `dvc repro --keep-going` (a failure stops only
# what depends on it),
# and after a failure the report of every model x variant, then exit 1.
repro: setup
	$(BIN)/aipc toolchain --check
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/aipc repro

test: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pytest

clean:
	rm -rf $(VENV) $(NPU_VENV)
