# Two commands: `make demo` (train AR + MDM on the embedded corpus) and `make test`.
# Each creates .venv with a Python >= 3.12 (override with PYTHON=/path/to/python3.12).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXTRAS ?= test,tfds,array_record,eval,hf,beam,docs
export XLA_FLAGS ?= --xla_force_host_platform_device_count=8
export TF_CPP_MIN_LOG_LEVEL ?= 3
export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: install demo test bench docs clean

$(STAMP): setup.py
	@test -x $(PY) || "$$(scripts/find_python.sh)" -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
	$(PY) -m pip install -q -e ".[$(EXTRAS)]" 2>&1 | grep -v -e "is ignored" -e "^  " -e "^$$" || true
	$(PY) -c "import dllm_jax, jax, flax, optax, orbax.checkpoint, grain, sentencepiece" 
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py --workdir runs/demo

test: $(STAMP)
	$(PY) -m pytest -q tests $(PYTEST_ARGS)

docs: $(STAMP)   # the guides under docs/ as a site in build/site
	$(VENV)/bin/mkdocs build --strict

bench: $(STAMP)
	$(PY) bench/train_speed.py

clean:
	rm -rf runs .pytest_cache
