# The two set-up commands (see README): `make demo` and `make test`.
# Both create .venv if it is missing and install everything conveyor needs
# from this repository's own files, building conveyor._C on the way.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch==2.13.0 is the CPU wheel on these machines; any other spec may pull a
# multi-GB CUDA build. A torch that is already importable is never replaced:
# when the base interpreter has one (a GPU machine with CUDA torch), the venv
# is created with --system-site-packages so it sees that torch instead.
TORCH_SPEC ?= torch==2.13.0
VENV_FLAGS ?= $(shell $(PYTHON) -c "import torch" >/dev/null 2>&1 && echo --system-site-packages)
PYTEST_ARGS ?=

BUILD_INPUTS := pyproject.toml CMakeLists.txt $(shell find csrc -type f 2>/dev/null)

.PHONY: demo test lint format install bench clean protos serve-bench prometheus

demo: $(VENV)/.installed
	$(VENV)/bin/conveyor demo

test: $(VENV)/.installed lint prometheus
	$(PY) -m pytest $(PYTEST_ARGS)

# tests/deploy needs Debian's prometheus package (promtool and the server). Installed
# only when promtool is missing and we are root; otherwise nothing happens and those
# tests skip, saying why. A stale package list gets one `apt-get update` and a retry.
# The package's postinst starts its service (a server on :9090) unless policy-rc.d
# forbids it, as in most containers; a service started so is stopped again (the tests
# start their own server on loopback). PROMTOOL and APT_GET exist to test this step.
PROMTOOL ?= $(shell command -v promtool 2>/dev/null)
APT_GET ?= apt-get
prometheus:
	@if [ -n "$(PROMTOOL)" ] && [ -x "$(PROMTOOL)" ]; then \
		exit 0; \
	elif [ "$$(id -u)" != 0 ]; then \
		echo "prometheus: promtool missing and not root: not installing; tests/deploy will skip"; \
	else \
		echo "prometheus: installing Debian's prometheus package (promtool) for tests/deploy"; \
		export DEBIAN_FRONTEND=noninteractive; \
		$(APT_GET) install -y --no-install-recommends prometheus \
			|| { $(APT_GET) update && $(APT_GET) install -y --no-install-recommends prometheus; } \
			|| echo "prometheus: install failed; tests/deploy will skip"; \
		if [ -d /run/systemd/system ]; then systemctl stop prometheus >/dev/null 2>&1 || true; fi; \
		if [ -x /etc/init.d/prometheus ]; then /etc/init.d/prometheus stop >/dev/null 2>&1 || true; fi; \
	fi

lint: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(VENV)/.installed
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

install: $(VENV)/.installed

bench: $(VENV)/.installed
	$(PY) benchmarks/histogram_bench.py

$(PY):
	$(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.torch: | $(PY)
	$(PY) -c "import torch" >/dev/null 2>&1 || $(PY) -m pip install "$(TORCH_SPEC)"
	touch $@

# Editable install: Python edits take effect at once; a change under csrc/
# or to the build files re-runs this rule, which rebuilds conveyor._C.
$(VENV)/.installed: $(BUILD_INPUTS) $(VENV)/.torch
	$(PY) -m pip install -e ".[dev]"
	touch $@

# The serving benchmark (benchmarks/serve_bench.py); MLServer runs from its own
# venv under benchmarks/ (ignored) because its pins differ from conveyor's.
MLSERVER_VENV := benchmarks/.mlserver-venv

$(MLSERVER_VENV)/bin/mlserver:
	$(PYTHON) -m venv $(MLSERVER_VENV)
	# uvloop 0.22+ breaks MLServer 1.7.1's parallel inference workers (get_event_loop).
	$(MLSERVER_VENV)/bin/pip install --quiet "mlserver==1.7.1" "uvloop==0.21.0"

serve-bench: $(VENV)/.installed $(MLSERVER_VENV)/bin/mlserver
	$(PY) benchmarks/serve_bench.py

# Regenerate engine/protos/*_pb2*.py from engine/protos/grpc_service.proto
# (grpcio-tools from the dev extra); commit the result.
protos: $(VENV)/.installed
	$(PY) engine/protos/generate.py

clean:
	rm -rf build dist .pytest_cache .ruff_cache
