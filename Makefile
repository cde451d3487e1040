# Two-command quickstart. Both targets create .venv (Python 3.11) and install on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: quickstart test install benchmark wheel clean

$(BIN)/lopt: pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	@touch $(BIN)/lopt

install: $(BIN)/lopt

# The PyTorch bridge's extra for the tests: the CPU build of torch where the package index has it
# (TORCH=... to choose another), else the default build.
TORCH ?= torch==2.13.0+cpu
$(VENV)/.torch: $(BIN)/lopt
	$(BIN)/python -m pip install --quiet "$(TORCH)" || $(BIN)/python -m pip install --quiet -e ".[torch]"
	@touch $@

# Meta-train the default config (~2.5 min on 2 CPU cores) and evaluate it (~10-14 min), save runs/default/optimizer.npz,
# and write runs/default/report/report.md.
quickstart: install
	$(BIN)/lopt train --config default --out runs/default

test: install $(VENV)/.torch
	$(BIN)/python -m pytest tests

benchmark: install
	$(BIN)/python benchmarks/reference_pes.py
	$(BIN)/python benchmarks/step_cost.py --plain
	$(BIN)/python benchmarks/throughput.py

# A wheel (and sdist) in dist/, carrying the shipped optimizers as package data:
#   pip install dist/learned_opt-*.whl   (add [torch] for the PyTorch bridge)
wheel: install
	$(BIN)/python -m build --outdir dist .

clean:
	rm -rf runs
