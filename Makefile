# optbench. `make sweep` runs the benchmark end to end; `make test` checks the code. See README.md.
# Variables pass through: make sweep MODEL=resnet50 OPTIMIZATIONS=baseline,fp16 BATCH_SIZES=1,8 DEVICE=cuda
# Your own model: MODEL=timm:resnet18, MODEL=mypackage.models:build, MODEL=path/net.py:build (README, "Your own model");
# several in one sweep: MODELS=resnet50,timm:resnet18
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

MODEL         ?=
MODELS        ?=
MODEL_KWARGS  ?=
INPUT_SHAPE   ?=
WEIGHTS       ?=
OPTIMIZATIONS ?=
BATCH_SIZES   ?=
DEVICE        ?=
IMAGE_SIZE    ?=
NAME          ?=
REPEATS       ?=
MAX_REPEATS   ?=
TIME_BUDGET   ?=
SWEEP         ?= latest
CELLS         ?=
# BROKER=rabbitmq: with no OPTBENCH_BROKER_URL, the commands below start a private RabbitMQ as the broker
BROKER        ?= redis

SWEEP_ARGS = $(if $(MODELS),--model $(MODELS),$(if $(MODEL),--model $(MODEL))) \
             $(if $(MODEL_KWARGS),--model-kwargs '$(MODEL_KWARGS)') $(if $(INPUT_SHAPE),--input-shape $(INPUT_SHAPE)) \
             $(if $(WEIGHTS),--weights $(WEIGHTS)) $(if $(OPTIMIZATIONS),--optimizations $(OPTIMIZATIONS)) \
             $(if $(BATCH_SIZES),--batch-sizes $(BATCH_SIZES)) $(if $(DEVICE),--device $(DEVICE)) \
             $(if $(IMAGE_SIZE),--image-size $(IMAGE_SIZE)) $(if $(NAME),--name $(NAME)) \
             $(if $(REPEATS),--repeats $(REPEATS)) $(if $(MAX_REPEATS),--max-repeats $(MAX_REPEATS)) \
             $(if $(TIME_BUDGET),--time-budget $(TIME_BUDGET))

.PHONY: setup sweep resume decide worker flower status collect report recommend rerun cell compare test fleet-test bench lint docs clean

# The venv is rebuilt only when pyproject.toml changes (idempotent). redis-server and rabbitmq-server
# are system packages: installed with apt-get when missing and we are root.
setup: $(VENV)/.installed
	@for server in redis-server rabbitmq-server; do \
	  [ -x /usr/sbin/$$server ] || command -v $$server >/dev/null 2>&1 || { \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	      echo "installing $$server"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$server >/dev/null; \
	    else echo "$$server is missing: install it (Debian/Ubuntu: sudo apt-get install $$server)"; fi; }; \
	done

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[worker,dev]'
	touch $@

# The main job: uses OPTBENCH_REDIS_URL (or a Redis on localhost:6379) if reachable, else a private
# Redis under run/; starts local workers if none is online; waits; collects; stops what it started.
# The broker is OPTBENCH_BROKER_URL if set, else that Redis (BROKER=rabbitmq: a private RabbitMQ under run/).
sweep: setup
	$(PY) -m producer sweep --start-missing --broker $(BROKER) --wait $(SWEEP_ARGS)

# Finish an interrupted sweep (Ctrl-C, SIGTERM): start what is missing, send its unfinished runs again, wait, collect
resume: setup
	$(PY) -m producer resume --start-missing --broker $(BROKER) --sweep $(SWEEP)

# Drive a `--repeats auto` sweep started elsewhere (more rounds for undecided cells), then collect and report
decide: setup
	$(PY) -m producer decide --start-missing --broker $(BROKER) --sweep $(SWEEP)

# One Celery worker per GPU of this host (plus a CPU worker); point them at the shared Redis.
worker: setup
	$(PY) -m worker

# Flower at http://127.0.0.1:5555 (set OPTBENCH_FLOWER_USER and OPTBENCH_FLOWER_PASSWORD for basic auth)
flower: setup
	$(PY) -m producer flower --start-missing --broker $(BROKER) $(if $(FLOWER_ADDRESS),--address $(FLOWER_ADDRESS))

# make status [SWEEP=<id>] [ALL=1]: the first 60 runs and verdicts (failed, lost, running first), ALL=1 every one
status: setup
	$(PY) -m producer status --start-missing --broker $(BROKER) --sweep $(SWEEP) $(if $(ALL),--all)

collect: setup
	$(PY) -m results collect --start-missing --sweep $(SWEEP)

# results/<sweep id>/report.md with plots (make sweep writes it too)
report: setup
	$(PY) -m results report --start-missing --sweep $(SWEEP)

# What to ship: make recommend [SWEEP=<id>] [ARGS="--objective latency_p99 --max-latency-p99-ms 20"]
recommend: setup
	$(PY) -m results recommend $(if $(filter-out latest,$(SWEEP)),$(SWEEP)) $(ARGS)

# make rerun CELLS=fp16@bs16,prune@bs1#2 (a cell: all its runs; #N: one run)   or   make rerun   (all failed runs)
rerun: setup
	$(PY) -m producer rerun --start-missing --broker $(BROKER) --wait --sweep $(SWEEP) $(if $(CELLS),--cells $(CELLS),--failed)

# make compare A=<sweep id or runs CSV> B=<...> [FAIL_ON_REGRESSION=5]: B's cells against A's, exit 1 on a regression
compare: setup
	$(PY) -m results compare $(A) $(B) $(if $(FAIL_ON_REGRESSION),--fail-on-regression $(FAIL_ON_REGRESSION))

# One cell without any queue, e.g. make cell ARGS="--optimization fp16 --batch-size 4"
cell: setup
	$(PY) -m worker.cell $(ARGS)

# Two test processes at once (most tests wait on real workers and brokers), then the `serial` ones
# (timing, CPU contention) alone on a quiet machine.
test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -m "not serial" -n 2 --dist loadscope --durations=15
	$(PY) -m pytest -m serial

# The fleet as containers (not part of `make test`; root and Debian's docker.io, installed when missing): a private
# dockerd, the worker image from Dockerfile.gpu on a local Debian base (CPU only), Redis, RabbitMQ, Flower and two
# worker hosts on a private network; a sweep, the image's qualities, and kill/partition/Redis restart/SIGTERM faults.
fleet-test: setup
	$(PY) -m pytest tests/fleet -p no:xdist -p no:randomly -v -s  # -s: what it installs, pulls or makes is said as it happens

bench: setup
	$(PY) bench/bench_cell_timer.py
	$(PY) bench/bench_orchestration.py
	$(PY) -m bench.bench_soak
	$(PY) -m bench.bench_soak --broker rabbitmq
	$(PY) -m bench.bench_client
	$(PY) -m bench.bench_fleet

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# The docs' generated parts, from the code (no venv needed): docs/optimizations.md's table from shared/catalogue.py
docs:
	$(PYTHON) scripts/docs.py

clean:
	rm -rf .pytest_cache .ruff_cache build *.egg-info run
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +
