# fedsilo: `make demo` and `make test` set themselves up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The torch to install; the default is the CPU build. e.g. make install TORCH="torch==2.14.1"
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed
TYPECHECK_TREE := build/typecheck

.PHONY: install test test-slow lint typecheck demo proto clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	@touch $(STAMP)

# mypy cannot follow the editable install's import hook that maps common/ to fedsilo.common,
# so it checks a tree of symlinks with the installed layout.
typecheck: install
	@mkdir -p $(TYPECHECK_TREE)/fedsilo
	@for role in common server client provision; do ln -sfn ../../../$$role $(TYPECHECK_TREE)/fedsilo/$$role; done
	cd $(TYPECHECK_TREE) && MYPYPATH=. ../../$(BIN)/python -m mypy --config-file ../../pyproject.toml -p fedsilo

lint: install
	$(BIN)/python -m ruff check .
	$(BIN)/python -m ruff format --check .

test: install lint typecheck
	$(BIN)/python -m pytest

test-slow: install
	$(BIN)/python -m pytest -m slow

demo: install
	$(BIN)/python tools/demo.py

proto: install
	$(BIN)/python tools/genproto.py

clean:
	rm -rf build runs .mypy_cache .ruff_cache
