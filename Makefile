# serving: every target builds its own .venv from a bare Python 3.11 + pip.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
TRITONCLIENT := tritonclient==2.73.0
DEMO_REPO ?= model_repository
DEMO_DATA ?= demo_data
HTTP_PORT ?= 8000
GRPC_PORT ?= 8001
METRICS_PORT ?= 8002
# Where `make serve` logs the demo's predictions (docs/prediction-log.md).
PREDICTION_LOG ?= prediction_log

.PHONY: grpcpp compiled-check serve checks test docs unit integration gpu-test gpu-extra check-aarch64 check-arm64 check-image bench-footprint bench-modes bench-log lint format proto proto-check rules prometheus chromium screenshots bench bench-stages bench-models bench-overload bench-lifecycle bench-batch soak loadtest clean

# torch comes through pip, which takes the machine's own CPU build where pip's configuration
# points at one (uv does not read pip's configuration: it would take PyPI's CUDA build of several
# GB); the rest through uv, which installs in parallel (docs/testing.md has the times). The torch
# requirement is the `cpu` extra's, read from pyproject.toml. Bytecode is compiled at install, as
# pip does: where PYTHONDONTWRITEBYTECODE is set (as on this project's CI) nothing else writes it,
# and every process would compile what it imports (the integration suite took 740 s instead of ~480).
TORCH_REQUIREMENT = $(shell $(PYTHON) -c "import tomllib; print(next(r for r in tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['cpu'] if r.startswith('torch')))")
$(BIN)/.installed: pyproject.toml setup.py src/serving/protocol/_frontend.cpp src/serving/prediction_log/_hand_over.c | grpcpp
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q '$(TORCH_REQUIREMENT)' 'uv>=0.5'
	$(BIN)/uv pip install -q --compile-bytecode --python $(PY) -e '.[cpu,dev]'
	$(BIN)/uv pip install -q --compile-bytecode --python $(PY) --no-deps $(TRITONCLIENT)
	touch $@

venv: $(BIN)/.installed

# grpc++'s headers (Debian's libgrpc++-dev) for the compiled gRPC front end that `pip install`
# builds (setup.py). Where they cannot be installed, the package still installs and serves gRPC
# with grpc.aio; `make test` checks the front end and the log's hand-over were built (compiled-check).
grpcpp:
	@pkg-config --exists grpc++ 2>/dev/null || { \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
	    g++ pkg-config libgrpc++-dev; } || echo "no grpc++: the compiled gRPC front end will not be built (grpc.aio serves gRPC)"

compiled-check: $(BIN)/.installed
	$(PY) -c "from serving.protocol import _frontend; print('compiled gRPC front end: built, grpc++', _frontend.GRPC_VERSION)"
	$(PY) -c "from serving.prediction_log import _hand_over; print('compiled prediction log hand-over: built')"

$(DEMO_REPO)/.built: $(BIN)/.installed src/serving/demo.py $(wildcard src/serving/demo_models/*.py)
	$(BIN)/serving demo-repo $(DEMO_REPO)
	touch $@

# The demo digits as Parquet, for the first batch job and the lifecycle walkthrough (docs/).
$(DEMO_DATA)/.built: $(BIN)/.installed src/serving/demo.py
	$(BIN)/serving demo-data $(DEMO_DATA)
	touch $@

serve: $(DEMO_REPO)/.built $(DEMO_DATA)/.built
	$(BIN)/serving serve --repository $(DEMO_REPO) --http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT) --metrics-port $(METRICS_PORT) \
	  --prediction-log $(PREDICTION_LOG)

lint: $(BIN)/.installed
	$(BIN)/ruff check src tests bench loadtests docs
	$(BIN)/ruff format --check src tests bench loadtests docs
	$(BIN)/mypy src
	$(BIN)/lint-imports

format: $(BIN)/.installed
	$(BIN)/ruff format src tests bench loadtests docs
	$(BIN)/ruff check --fix src tests bench loadtests docs

# Generated gRPC code: regenerate with `make proto`; `make proto-check` fails on drift.
# The two seds make the generated code importable as a package: the message classes must
# carry their real module path, or Serve's gRPC proxy cannot pickle them to the replica.
PB_OUT := src/serving/protocol/_pb
define gen_proto
	PATH=$(abspath $(BIN)):$$PATH $(PY) -m grpc_tools.protoc -I protos --python_out=$(1) --grpc_python_out=$(1) --mypy_out=$(1) protos/inference.proto
	sed -i 's/^import inference_pb2 as inference__pb2/from serving.protocol._pb import inference_pb2 as inference__pb2/' $(1)/inference_pb2_grpc.py
	sed -i "s/(DESCRIPTOR, 'inference_pb2', _globals)/(DESCRIPTOR, 'serving.protocol._pb.inference_pb2', _globals)/" $(1)/inference_pb2.py
endef

proto: $(BIN)/.installed
	$(call gen_proto,$(PB_OUT))

proto-check: $(BIN)/.installed
	rm -rf .proto-check && mkdir -p .proto-check
	$(call gen_proto,.proto-check)
	diff -r -x __init__.py -x __pycache__ $(PB_OUT) .proto-check && rm -rf .proto-check

# Unit and adapter tests run in their own processes; integration tests (real Ray, tritonclient)
# in others: tritonclient's generated `inference.*` protobuf classes cannot share a process
# with ours. Each suite runs on TEST_WORKERS pytest-xdist workers (2: the suites wait on servers
# and Ray about as much as they compute; docs/testing.md has the measurements). Integration
# tests go to the workers a module at a time (--dist loadscope), so a module's own server is
# started once; each worker starts the session's shared server for itself.
TEST_WORKERS ?= 2
unit: $(BIN)/.installed
	$(BIN)/pytest tests/unit tests/adapter tests/gpu -q -n $(TEST_WORKERS) --durations=15

# The GPU tests alone (they skip without CUDA; on a GPU host they run).
gpu-test: $(BIN)/.installed
	$(BIN)/pytest tests/gpu -q -rs

# The `gpu` extra (onnxruntime-gpu, torch) must resolve from the registries, as the image installs it
# (uv resolves it for linux/x86_64 in ~2 s; pip's --dry-run took ~22 s).
gpu-extra: $(BIN)/.installed
	$(BIN)/uv pip compile --quiet --python-platform x86_64-manylinux_2_28 --python-version 3.11 --no-header \
	  --output-file .gpu-extra.txt --extra gpu pyproject.toml
	$(PY) -c "names = {l.split('==')[0] for l in open('.gpu-extra.txt') if l[:1].isalpha()}; \
	  missing = {'onnxruntime-gpu', 'torch'} - names; assert not missing, missing; print('gpu extra resolves:', sorted(names & {'onnxruntime-gpu', 'torch'}))"
	rm -f .gpu-extra.txt

# linux/aarch64 (edge boards, Graviton, Jetson userland): the package and its CPU and tabular
# extras resolve to aarch64 wheels, nothing built from source. uv resolves for that platform with
# the environment markers evaluated for it (pip --platform evaluates them for this machine).
AARCH64_EXTRAS := cpu,sklearn,xgboost,lightgbm
check-aarch64: $(BIN)/.installed
	$(BIN)/uv pip install --quiet --dry-run --python-platform aarch64-manylinux_2_28 --python-version 3.11 \
	  --only-binary :all: --target "$$(mktemp -d)" '.[$(AARCH64_EXTRAS)]'
	@echo "linux/aarch64: every dependency of .[$(AARCH64_EXTRAS)] has a wheel"

# The demo's ONNX model served standalone by an aarch64 Python under qemu user emulation (Debian's
# arm64 python3.11 and the aarch64 wheels; apt adds the arm64 architecture and qemu-user-static).
check-arm64: $(BIN)/.installed
	bash tests/arm64/check.sh

# The CPU image built from the Dockerfile and served, without a Docker daemon or a registry
# (podman, and a debootstrap stand-in for python:3.11-slim; root needed; not in make test).
check-image: $(BIN)/.installed
	bash tests/image/check.sh

integration: $(BIN)/.installed prometheus chromium
	$(BIN)/pytest tests/integration -q -n $(TEST_WORKERS) --dist loadscope --durations=15

# Debian's prometheus package: promtool (rule tests) and prometheus (integration test).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
prometheus:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || { \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends prometheus; }

# Debian's chromium: the operator page's browser tests (driven by Playwright through executable_path).
chromium:
	@command -v chromium >/dev/null || { \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium; }

# Screenshots of the operator page under load, for the README (docs/).
screenshots: $(BIN)/.installed $(DEMO_REPO)/.built chromium
	$(PY) docs/screenshots.py --repository $(DEMO_REPO)

rules: prometheus
	cd configs/prometheus && promtool check rules alerts.yml && promtool test rules alerts_test.yml
	promtool check config configs/prometheus/prometheus.yml

# The documentation site (docs/, mkdocs.yml): strict, so a broken link or anchor fails.
docs: $(BIN)/.installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site

# The checks (mypy alone takes ~27 s of one core) run beside the unit tests (~62 CPU-s on two workers,
# 78 % of the two cores), each target's output printed whole when it ends; then the integration tests.
checks: lint proto-check compiled-check rules gpu-extra check-aarch64 docs

test: $(BIN)/.installed
	$(MAKE) --no-print-directory -j2 --output-sync=target checks unit
	$(MAKE) --no-print-directory integration

# Load test a running server (defaults: the one `make serve` starts): a 60 s step load up to 16 users
# (LOADTEST_ARGS changes it). Report in loadtest-report/.
LOADTEST_ARGS ?= --model digits --shape step --users 16 --duration 60 --slo-p99-ms 500 --slo-error-ratio 0.01
loadtest: $(BIN)/.installed
	@echo "load test: $(LOADTEST_ARGS) against 127.0.0.1:$(HTTP_PORT) (HTTP) and :$(GRPC_PORT) (gRPC)"
	$(PY) loadtests/run.py --host http://127.0.0.1:$(HTTP_PORT) --grpc-host 127.0.0.1:$(GRPC_PORT) $(LOADTEST_ARGS)

bench: $(BIN)/.installed
	$(PY) bench/online.py
	$(PY) bench/modes.py
	$(PY) bench/prediction_log_cost.py
	$(PY) bench/footprint.py

# Standalone vs Ray mode throughput, the same data plane (bench/results/modes.md).
bench-modes: $(BIN)/.installed
	$(PY) bench/modes.py

# The prediction log's cost at sample_rate 0.05 and 1 against no log (bench/results/prediction_log.md).
bench-log: $(BIN)/.installed
	$(PY) bench/prediction_log_cost.py

# Cold start and idle memory: standalone, standalone --workers 2, Ray mode, PyTriton (bench/results/footprint.md).
bench-footprint: $(BIN)/.installed
	$(PY) bench/footprint.py

# Batch scoring vs one plain process; datasets are generated once into bench/.data (~1.4 GB).
BENCH_BATCH_ARGS ?=
# Soak: 10 minutes of bounded load with a version unloaded / loaded every minute (--churn rollout: a rolling update); memory and fds by role (not in `make test`).
soak: $(BIN)/.installed
	$(PY) bench/soak.py

# Overload: peak throughput, then 10x the clients; refusal latency and throughput ratio.
bench-overload: $(BIN)/.installed
	$(PY) bench/overload.py

# Lifecycle costs: drift watch throughput and shadow latency, on vs off (bench/results/lifecycle.md).
bench-lifecycle: $(BIN)/.installed
	$(PY) bench/lifecycle_cost.py --rounds 5 | tee bench/results/lifecycle.md

# Python steps, pipelines and tabular models (bench/results/models.md, pipeline_overhead.md, tabular.md):
# digits_image against PyTriton over gRPC and HTTP, a branching pipeline, per-step cost, native vs ONNX.
# Where a gRPC request's CPU goes, by thread and by stage (perf_analyzer + py-spy; bench/results/grpc_stages.md).
bench-stages: $(BIN)/.installed
	$(PY) bench/grpc_stages.py

bench-models: $(BIN)/.installed
	$(PY) bench/pipeline_overhead.py
	$(PY) bench/tabular.py
	$(PY) bench/image_pipeline.py

bench-batch: $(BIN)/.installed
	$(PY) bench/batch.py $(BENCH_BATCH_ARGS)

clean:
	rm -rf $(VENV) $(DEMO_REPO) $(DEMO_DATA) .proto-check .pytest_cache site
