# The two commands of the README: `make demo` and `make test`. Both set everything up first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

PV_VENV  := .venv-pytorchvideo
PV_STAMP := $(PV_VENV)/.installed

.PHONY: install system-deps test test-extras demo bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# Exact CPU build first: an unpinned torch would pull gigabytes of CUDA packages.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

install: $(STAMP)

# ffmpeg encodes test videos and publishes live test streams; redis-server backs the Redis bus tests; mosquitto is
# the MQTT broker the alert tests start (openssl makes their TLS certificates); chromium is the browser Playwright
# drives in the console's browser test (Debian's build: Playwright downloads none).
system-deps:
	@missing=""; \
	command -v ffmpeg >/dev/null || missing="$$missing ffmpeg"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q $$missing; \
	fi

test: install system-deps
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# The pytorchvideo extra in its own environment: pytorchvideo imports torchvision, and the only torchvision on this
# machine's disk is 0.29.1, built for torch 2.14.1 (a CUDA build, several GB), so it never enters the main venv.
$(PV_STAMP): pyproject.toml
	test -x $(PV_VENV)/bin/python || $(PYTHON) -m venv $(PV_VENV)
	$(PV_VENV)/bin/python -m pip install -q --upgrade pip
	$(PV_VENV)/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PV_VENV)/bin/python -m pip install -q -e ".[pytorchvideo]" pytest pytest-timeout
	touch $@

test-extras: $(PV_STAMP) system-deps
	$(PV_VENV)/bin/python -m pytest -q tests_extras

# The main job: simulated cameras through the whole pipeline with the shipped model and bundle.
demo: install
	$(BIN)/clipwatch demo

bench: install
	$(BIN)/python benchmarks/density_scoring.py
	$(BIN)/python benchmarks/model_forward.py
	$(BIN)/python benchmarks/decode.py
	$(BIN)/python benchmarks/pipeline.py

clean:
	rm -rf $(VENV) $(PV_VENV) .pytest_cache
