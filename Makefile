# fedsilo: `make demo` and `make test` set themselves up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The torch to install; the default is the CPU build. e.g. make install TORCH="torch==2.14.1"
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed
# The package's top-level folders (each installs as fedsilo.<role>).
ROLES  := common tasks server client provision report sim
TYPECHECK_TREE := build/typecheck
# Fashion-MNIST (the fmnist task) comes from Debian's package, never from the network at run time.
FMNIST_DIR := /usr/share/datasets/fashion-mnist
FMNIST_PKG := dataset-fashion-mnist
# The status page's browser test drives Debian's chromium through Playwright (a browser download
# of Playwright's own fails without internet; its Python wheel brings the driver).
CHROMIUM     := /usr/bin/chromium
CHROMIUM_PKG := chromium

.PHONY: install test test-slow lint typecheck demo proto clean bench bench-rounds bench-peers \
	bench-sim bench-wan bench-dp datasets datasets-if-possible browser browser-if-possible \
	reproduce-niid

install: $(STAMP) datasets-if-possible browser-if-possible

# Install the datasets of the built-in tasks with apt-get (as root, or through passwordless sudo).
datasets:
	@if [ -d $(FMNIST_DIR) ]; then \
		echo "datasets: Fashion-MNIST is in $(FMNIST_DIR)"; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
		echo "datasets: no apt-get here; get Fashion-MNIST's IDX files into $(FMNIST_DIR)" >&2; exit 1; \
	else \
		if [ "$$(id -u)" = 0 ]; then sudo=""; \
		elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; \
		else echo "datasets: not root; run: sudo apt-get install $(FMNIST_PKG)" >&2; exit 1; fi; \
		echo "datasets: installing $(FMNIST_PKG) with apt-get"; \
		$$sudo apt-get install -y -q $(FMNIST_PKG) \
			|| { $$sudo apt-get update -q && $$sudo apt-get install -y -q $(FMNIST_PKG); }; \
	fi

# `install` tries `datasets` but never fails on it: only the fmnist task needs the files.
datasets-if-possible:
	@test -d $(FMNIST_DIR) || $(MAKE) --no-print-directory -f $(firstword $(MAKEFILE_LIST)) datasets \
		|| echo "WARNING: Fashion-MNIST is not installed; the fmnist task and its tests need it" >&2

# Install chromium with apt-get (as root, or through passwordless sudo), as `datasets` does.
browser:
	@if [ -x $(CHROMIUM) ]; then \
		echo "browser: chromium is $(CHROMIUM)"; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
		echo "browser: no apt-get here; install chromium as $(CHROMIUM)" >&2; exit 1; \
	else \
		if [ "$$(id -u)" = 0 ]; then sudo=""; \
		elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; \
		else echo "browser: not root; run: sudo apt-get install $(CHROMIUM_PKG)" >&2; exit 1; fi; \
		echo "browser: installing $(CHROMIUM_PKG) with apt-get"; \
		$$sudo apt-get install -y -q $(CHROMIUM_PKG) \
			|| { $$sudo apt-get update -q && $$sudo apt-get install -y -q $(CHROMIUM_PKG); }; \
	fi

# `install` tries `browser` but never fails on it: only the status page's browser test needs it
# (and skips, saying why, where chromium cannot be installed).
browser-if-possible:
	@test -x $(CHROMIUM) || $(MAKE) --no-print-directory -f $(firstword $(MAKEFILE_LIST)) browser \
		|| echo "WARNING: chromium is not installed; the status page's browser test needs it" >&2

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	@touch $(STAMP)

# mypy cannot follow the editable install's import hook that maps common/ to fedsilo.common,
# so it checks a tree of symlinks with the installed layout.
typecheck: install
	@mkdir -p $(TYPECHECK_TREE)/fedsilo
	@for role in $(ROLES); do ln -sfn ../../../$$role $(TYPECHECK_TREE)/fedsilo/$$role; done
	cd $(TYPECHECK_TREE) && MYPYPATH=. ../../$(BIN)/python -m mypy --config-file ../../pyproject.toml -p fedsilo

lint: install
	$(BIN)/python -m ruff check .
	$(BIN)/python -m ruff format --check .

# Three workers on two cores: most tests wait on real daemons (rounds, deadlines, reconnects);
# worksteal hands a long test's neighbours to an idle worker. The suite is ~1,100 s of CPU, most
# of it daemon start-ups (each imports torch): on this 2-core box 910 s serial, and 629 s so with
# the tests that came back from `make test-slow`.
TEST_WORKERS ?= 3

# The tests start ~340 daemons: their bytecode is compiled once here, not in each of them (an
# environment with PYTHONDONTWRITEBYTECODE set would otherwise compile it in every process).
test: install lint typecheck
	$(BIN)/python -m compileall -q -j 0 $(ROLES) tests bench tools
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal

test-slow: install
	$(BIN)/python -m pytest -m slow

# Benchmarks print figures (median, min, max); they never pass or fail on time.
bench: install
	@mkdir -p build
	$(BIN)/python bench/codec_bench.py --json build/bench-codec.json
	$(BIN)/python bench/transfer_bench.py --json build/bench-transfer.json
	$(BIN)/python bench/compression_bench.py --json build/bench-compression.json

# Seconds per round through the daemons (256 MiB x 2 clients; 10, 100, 1,000 clients): minutes,
# so not part of `bench`.
bench-rounds: install
	@mkdir -p build
	$(BIN)/python bench/round_bench.py --json build/bench-rounds.json

# The same rounds with Flower 1.42 (legacy gRPC; its own venv bench/.venv-flwr, made on first
# use), each fedsilo job interleaved with a Flower job; the ratio (Flower / fedsilo) is taken
# within each repetition. About 10 minutes.
bench-peers: install
	@mkdir -p build
	$(BIN)/python bench/peers/flower_bench.py --json build/bench-peers.json

# fedsilo, raw TCP, plain grpcio and Flower over emulated WAN links (network namespaces and a
# user-space delay line, bench/wan/): needs root, and says so and skips otherwise. About 25
# minutes (BENCHMARKS.md, "WAN").
bench-wan: install
	@mkdir -p build
	$(BIN)/python bench/wan_bench.py --json build/bench-wan.json

# Record-level DP-SGD on fmnist, 10 silos: accuracy, epsilon, bytes and seconds per round for no
# DP and budgets 8, 3, 1 (with secure aggregation too); about 15 minutes on 2 cores.
bench-dp: install
	@mkdir -p build
	$(BIN)/python bench/dp_bench.py --json build/bench-dp.json

# The job listens on a free port, or on DEMO_PORT (make demo DEMO_PORT=50100, or
# make demo PORT=50100; a PORT that is merely in the environment is not taken).
DEMO_PORT := $(or $(DEMO_PORT),$(if $(filter command line,$(origin PORT)),$(PORT)))

# Seconds per simulated round: fl-sim with 1 and 2 workers, on Ray, and Flower 1.42's simulation
# engine (its venv bench/.venv-flwr, made on first use), side by side: many minutes.
bench-sim: install
	@mkdir -p build
	$(BIN)/python bench/sim_bench.py --json build/bench-sim.json

demo: install
	$(BIN)/python tools/demo.py $(if $(DEMO_PORT),--port $(DEMO_PORT))

# NIID-Bench on Fashion-MNIST (docs/results.md): every cell of configs/niid/ through fl-sim,
# then one fl-report per partition. Days on 2 cores; a cell already finished is skipped (its
# model.pt exists). make reproduce-niid NIID_CELLS="dir0.5/fedavg c2/scaffold" runs only those.
NIID_OUT   ?= runs/niid
NIID_CELLS ?= $(patsubst configs/niid/%.toml,%,$(sort $(wildcard configs/niid/*/*.toml)))
reproduce-niid: install datasets
	@set -e; for cell in $(NIID_CELLS); do \
		if [ -f $(NIID_OUT)/$$cell/model.pt ]; then echo "niid: $$cell done"; continue; fi; \
		echo "niid: $$cell"; \
		$(BIN)/fl-sim --config configs/niid/$$cell.toml --out $(NIID_OUT)/$$cell; \
	done
	@set -e; for part in $(sort $(dir $(NIID_CELLS))); do \
		runs=$$(for cell in $(NIID_CELLS); do case $$cell in $$part*) echo $(NIID_OUT)/$$cell;; esac; done); \
		$(BIN)/fl-report $$runs --out $(NIID_OUT)/$${part%/}-report --latex; \
	done

proto: install
	$(BIN)/python tools/genproto.py

clean:
	rm -rf build runs .mypy_cache .ruff_cache
