#!/usr/bin/env bash
# `make check-image`: the CPU image (Dockerfile) built and served, on a machine with no Docker daemon
# and no container registry (only Debian's and PyPI's mirrors). Needs root.
#  1. A local stand-in for python:3.11-slim-bookworm: Debian bookworm (debootstrap) with Debian's
#     python3.11 and its headers (the official image ships Python.h, which the compiled gRPC front
#     end builds against), and this machine's CA bundle (its network may re-sign TLS).
#  2. `podman build` of the Dockerfile unchanged, with PYTHON_IMAGE pointing at that base
#     (TORCH_INDEX at PyPI: download.pytorch.org is not reachable here; EXTRAS=onnx needs no torch).
#  3. The image's root filesystem run with its ENTRYPOINT and CMD, as its user, under chroot:
#     crun cannot set the container's rlimits in this VM (setrlimit: Operation not permitted).
#     The demo's ONNX model answers one request with an API key; without the key it is refused.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
WORK=${WORK:-/tmp/serving-image-check}
BASE=localhost/python:3.11-bookworm-local-headers
PODMAN=(podman --storage-driver=vfs)
PORT=${PORT:-28000}
need() { command -v "$1" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2"; }; }
need podman podman; need debootstrap debootstrap; need crun crun
mkdir -p "$WORK"
if ! "${PODMAN[@]}" image exists "$BASE"; then
  rm -rf "$WORK/rootfs"
  debootstrap --variant=minbase bookworm "$WORK/rootfs" http://deb.debian.org/debian >"$WORK/debootstrap.log"
  chroot "$WORK/rootfs" bash -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends python3.11 python3.11-venv python3.11-dev python-is-python3 ca-certificates" >"$WORK/base.log"
  cp /etc/ssl/certs/ca-certificates.crt "$WORK/rootfs/etc/ssl/certs/ca-certificates.crt"
  rm -rf "$WORK/rootfs/var/lib/apt/lists/"*
  tar -C "$WORK/rootfs" -c . | "${PODMAN[@]}" import --change "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt" - "$BASE"
fi
"${PODMAN[@]}" build --isolation chroot --network host --build-arg PYTHON_IMAGE="$BASE" \
  --build-arg TORCH_INDEX=https://pypi.org/simple -t localhost/serving:cpu "$ROOT" >"$WORK/build.log"
echo "built localhost/serving:cpu: $("${PODMAN[@]}" image inspect localhost/serving:cpu --format '{{.Size}}') bytes"

rm -rf "$WORK/repo" "$WORK/keys.yaml"
"$ROOT/.venv/bin/serving" demo-repo "$WORK/demo" >/dev/null
mkdir -p "$WORK/repo" && cp -r "$WORK/demo/digits" "$WORK/repo/"
KEY=$("$ROOT/.venv/bin/serving" keys create check --file "$WORK/keys.yaml" 2>/dev/null | head -1)
MNT=$("${PODMAN[@]}" image mount localhost/serving:cpu)
cleanup() {
  [ -n "${PID:-}" ] && kill -TERM "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
  umount "$MNT/models" "$MNT/proc" "$MNT/dev" 2>/dev/null || true
  "${PODMAN[@]}" image unmount localhost/serving:cpu >/dev/null || true
}
trap cleanup EXIT
mkdir -p "$MNT/models" "$MNT/etc/serving"
mount --bind "$WORK/repo" "$MNT/models"; mount -t proc proc "$MNT/proc"; mount --bind /dev "$MNT/dev"
install -m 0644 "$WORK/keys.yaml" "$MNT/etc/serving/keys.yaml"
ENV=$("${PODMAN[@]}" image inspect localhost/serving:cpu --format '{{range .Config.Env}}{{.}} {{end}}')
ENTRY=$("${PODMAN[@]}" image inspect localhost/serving:cpu --format '{{range .Config.Entrypoint}}{{.}} {{end}}{{range .Config.Cmd}}{{.}} {{end}}')
USER_=$("${PODMAN[@]}" image inspect localhost/serving:cpu --format '{{.Config.User}}')
# shellcheck disable=SC2086
env -i $ENV HOME=/home/serving /usr/sbin/chroot --userspec="$USER_:$USER_" "$MNT" $ENTRY --http-port "$PORT" \
  --grpc-port $((PORT + 1)) --metrics-port $((PORT + 2)) >"$WORK/run.log" 2>&1 &
PID=$!
for _ in $(seq 120); do curl -sf "127.0.0.1:$PORT/v2/health/ready" >/dev/null && break; sleep 0.5; done
BODY='{"inputs":[{"name":"input","datatype":"FP32","shape":[1,64],"data":['"$(python3 -c "print(','.join(['0.5']*64))")"']}]}'
ANSWER=$(curl -sf -X POST -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' -d "$BODY" \
  "127.0.0.1:$PORT/v2/models/digits/infer")
echo "$ANSWER" | grep -q '"name":"label"' || { echo "no answer: $ANSWER"; tail -20 "$WORK/run.log"; exit 1; }
CODE=$(curl -s -o /dev/null -w '%{http_code}' -X POST -d "$BODY" "127.0.0.1:$PORT/v2/models/digits/infer")
[ "$CODE" = 401 ] || { echo "without a key: $CODE, expected 401"; exit 1; }
# gRPC through the image's compiled front end (built by the Dockerfile's pip install against grpc++).
env -i $ENV /usr/sbin/chroot --userspec="$USER_:$USER_" "$MNT" python -c \
  "from serving.protocol import _frontend; print('compiled gRPC front end in the image, grpc++', _frontend.GRPC_VERSION)"
"$ROOT/.venv/bin/python" - "$((PORT + 1))" "$KEY" <<'PY'
import sys

import grpc

from serving.protocol._pb import inference_pb2 as pb
from serving.protocol._pb.inference_pb2_grpc import GRPCInferenceServiceStub

port, key = sys.argv[1], sys.argv[2]
stub = GRPCInferenceServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
assert stub.ModelReady(pb.ModelReadyRequest(name="digits"), metadata=(("authorization", f"Bearer {key}"),), timeout=10).ready
try:
    stub.ModelReady(pb.ModelReadyRequest(name="digits"), timeout=10)
    raise SystemExit("gRPC without a key answered")
except grpc.RpcError as exc:
    assert exc.code() == grpc.StatusCode.UNAUTHENTICATED, exc
print("gRPC: ModelReady with the key, UNAUTHENTICATED without")
PY
echo "the image serves: ready, an answer with the key, 401 without ($(grep -o 'started in [0-9.]*s' "$WORK/run.log"))"
