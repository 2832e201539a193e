# serving on CPUs, one image for linux/amd64 and linux/arm64 (a small box, an edge board):
#
#   docker buildx build --platform linux/amd64,linux/arm64 -t serving:cpu .
#   docker run -p 8000:8000 -p 8001:8001 -p 8002:8002 -v $PWD/model_repository:/models serving:cpu
#
# The server runs standalone (`serving serve --standalone`: one process, no Ray; add
# `--workers N` for N processes on the same ports). Ray mode (autoscaling, clusters) is in the
# image too: override the command without --standalone. EXTRAS picks the runtimes: `onnx`
# (default: onnxruntime, which has wheels for both architectures), `cpu` (+ torch, for
# TorchScript; on arm64 torch's CPU build comes from TORCH_INDEX), and the tabular extras
# (`sklearn`, `xgboost`, `lightgbm`). Jetson (L4T) boards: build FROM an L4T JetPack base
# (nvcr.io/nvidia/l4t-jetpack) with onnxruntime-gpu from NVIDIA's Jetson index instead.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a virtual environment with the package and its runtimes --------------------------
FROM ${PYTHON_IMAGE} AS build
ARG EXTRAS=onnx
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# g++ and grpc++'s headers: `pip install` builds the compiled gRPC front end (setup.py).
RUN apt-get update && apt-get install -y --no-install-recommends g++ pkg-config libgrpc++-dev \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY src ./src
COPY protos ./protos
# Wheels only: every dependency has them for both architectures (`make check-aarch64`).
RUN pip install --only-binary=:all: --extra-index-url "${TORCH_INDEX}" ".[${EXTRAS}]"
# The compiled gRPC front end must have been built (setup.py falls back to grpc.aio silently).
RUN python -c "from serving.protocol import _frontend"

# ---- runtime: the venv on a slim Python, no build tools --------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
# grpc++'s shared libraries, which the compiled gRPC front end links.
RUN apt-get update && apt-get install -y --no-install-recommends libgrpc++1.51 \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin serving
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    SERVING_REPOSITORY=/models \
    SERVING_HOST=0.0.0.0
USER serving
WORKDIR /home/serving
# API keys: mount a keys file made with `serving keys create ... --file keys.yaml` at
# /etc/serving/keys.yaml (docker run -v $PWD/keys.yaml:/etc/serving/keys.yaml:ro). Binding
# 0.0.0.0 without keys needs `--insecure` in the command instead.
VOLUME ["/models"]
# HTTP (KServe V2), gRPC (KServe V2), Prometheus metrics (the server's own endpoint).
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python3", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=4).status != 200)"]
ENTRYPOINT ["serving", "serve"]
CMD ["--standalone", "--repository", "/models", "--host", "0.0.0.0", "--api-keys", "/etc/serving/keys.yaml"]
