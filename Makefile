# Two commands on a fresh clone:
#   make demo   installs into .venv, prunes DeiT-S by 46.2% MACs on real digits and prints its table
#   make test   installs into .venv and runs the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test bench-cpu clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vitcompress prune deit_small_patch16_224 --flops-reduction 0.462 --importance taylor \
		--data digits --calib-images 32 -o runs/deit_s_46 --force
	$(VENV)/bin/vitcompress info runs/deit_s_46

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf runs build *.egg-info
