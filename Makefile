# Set-up and the two entry points the README opens with.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STORE ?= ./cci-store

.PHONY: setup system-deps lint run test clean

$(BIN)/cci: pyproject.toml
	$(PY) -m venv $(VENV)
	# -qq: errors only (this machine's pip config names index folders that do not exist: a warning per package)
	$(BIN)/pip install -qq --upgrade pip
	# torch first, pinned: on these machines 2.13.0 is a local CPU wheel; anything else pulls CUDA builds
	$(BIN)/pip install -qq torch==2.13.0
	$(BIN)/pip install -qq -e '.[test]'
	touch $(BIN)/cci

setup: $(BIN)/cci

# Debian packages the suite needs (Fashion-MNIST, headless chromium + driver), installed when missing
system-deps:
	bash scripts/system-deps.sh

# The main job on the embedded default: local store, temporary Prefect server (SQLite), LocalCluster,
# built-in corpus (scikit-learn digits at 28x28, no download): the whole pipeline, ingest to published dataset.
run: setup
	OMP_NUM_THREADS=1 $(BIN)/cci run builtin:digits --store $(STORE)

# Lint and import order (configured in pyproject.toml); the suite runs only on a clean tree
lint: setup
	$(BIN)/ruff check .

# test modules run in parallel, one module per worker process (its module fixtures stay in one process),
# as many workers as cores, at most 4: each test holds one core (OMP_NUM_THREADS=1)
TEST_JOBS ?= $(shell n=$$(nproc); echo $$(( n < 4 ? n : 4 )))

test: setup system-deps lint
	CCI_REQUIRE_SYSTEM_DEPS=1 OMP_NUM_THREADS=1 PREFECT_SERVER_ANALYTICS_ENABLED=false $(BIN)/python -m pytest -q -p no:cacheprovider \
		-n $(TEST_JOBS) --dist loadfile --durations=15; \
	rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

clean:
	rm -rf $(VENV) $(STORE)
