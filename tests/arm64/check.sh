#!/usr/bin/env bash
# `make check-arm64`: the demo's ONNX digits model served standalone by an aarch64 CPython under
# qemu user emulation (no ARM hardware needed), and one V2 request answered over HTTP.
#
# The aarch64 userland is Debian bookworm's own python3.11 (arm64 .debs unpacked into a folder,
# no chroot); the package and its dependencies are the aarch64 wheels pip picks for that
# platform. qemu-user shows a guest the host's /proc/cpuinfo (x86), which onnxruntime's cpuinfo
# cannot parse on aarch64 (a crash at import); qemu resolves a guest's absolute paths inside the
# -L folder first, so an ARM /proc/cpuinfo and CPU lists are placed there.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${ARM64_WORK:-$ROOT/.arm64}
PY=$ROOT/.venv/bin/python
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
PACKAGES="python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 libssl3 zlib1g libffi8
  libexpat1 libgcc-s1 libstdc++6 libbz2-1.0 liblzma5 libsqlite3-0 libuuid1 libncursesw6 libtinfo6
  libreadline8 libcrypt1 libdb5.3 libgomp1 libnsl2 libtirpc3 libgssapi-krb5-2 libkrb5-3 libk5crypto3
  libkrb5support0 libcom-err2 libkeyutils1"

command -v qemu-aarch64-static >/dev/null || {
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends qemu-user-static
}

if [ ! -x "$WORK/root/usr/bin/python3.11" ]; then
  dpkg --print-foreign-architectures | grep -qx arm64 || { $SUDO dpkg --add-architecture arm64 && $SUDO apt-get update -qq; }
  rm -rf "$WORK/debs" && mkdir -p "$WORK/debs" "$WORK/root"
  (cd "$WORK/debs" && apt-get download -qq $(for p in $PACKAGES; do echo "$p:arm64"; done) media-types 2>/dev/null)
  for deb in "$WORK"/debs/*.deb; do dpkg-deb -x "$deb" "$WORK/root"; done
fi
mkdir -p "$WORK/root/proc" "$WORK/root/sys/devices/system/cpu"
for i in 0 1; do
  printf 'processor\t: %d\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x3\nCPU part\t: 0xd0c\nCPU revision\t: 1\n\n' "$i"
done > "$WORK/root/proc/cpuinfo"
echo 0-1 > "$WORK/root/sys/devices/system/cpu/possible"
echo 0-1 > "$WORK/root/sys/devices/system/cpu/present"

# The package as a wheel, then it and its dependencies as aarch64 wheels (none built from source).
rm -rf "$WORK/dist" && "$ROOT/.venv/bin/pip" wheel -q --no-deps --no-build-isolation -w "$WORK/dist" "$ROOT"
rm -rf "$ROOT/build"  # setuptools' build folder
"$ROOT/.venv/bin/pip" install -q --upgrade --target "$WORK/site" --only-binary=:all: --python-version 3.11 \
  --implementation cp --abi cp311 --abi abi3 --abi none --platform manylinux2014_aarch64 \
  --platform manylinux_2_17_aarch64 --platform manylinux_2_27_aarch64 --platform manylinux_2_28_aarch64 \
  "$(ls "$WORK"/dist/serving-*.whl)[onnx]" 2> >(grep -v "^WARNING: Location\|dependency resolver\|requires python-dateutil" >&2)

rm -rf "$WORK/repo" && "$PY" -c "from pathlib import Path; from serving.demo import build_digits; build_digits(Path('$WORK/repo'))"
read -r HTTP GRPC METRICS < <("$PY" -c "
import socket
s = [socket.socket() for _ in range(3)]
for x in s: x.bind(('127.0.0.1', 0))
print(*(x.getsockname()[1] for x in s))")

guest() { PYTHONPATH="$WORK/site" qemu-aarch64-static -L "$WORK/root" "$WORK/root/usr/bin/python3.11" "$@"; }
guest -c "import platform; print('guest:', platform.machine(), 'Python', platform.python_version())"
# exec: $server is qemu's own PID, which signals reach (a subshell's bash would hold SIGINT back).
(
  export PYTHONPATH="$WORK/site"
  exec qemu-aarch64-static -L "$WORK/root" "$WORK/root/usr/bin/python3.11" -m serving.cli serve --standalone \
    --repository "$WORK/repo" --http-port "$HTTP" --grpc-port "$GRPC" --metrics-port "$METRICS"
) > "$WORK/server.log" 2>&1 &
server=$!
trap 'kill -KILL $server 2>/dev/null || true' EXIT
"$PY" - "$server" "$HTTP" "$WORK/server.log" <<'PYTHON'
import json, os, sys, time, urllib.request

pid, port, log = int(sys.argv[1]), sys.argv[2], sys.argv[3]
began = time.monotonic()
while True:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as r:
            if r.status == 200:
                break
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit("the emulated server exited:\n" + open(log).read()[-3000:])
    if time.monotonic() - began > 600:
        sys.exit("the emulated server was not ready in 600 s:\n" + open(log).read()[-3000:])
    time.sleep(0.5)
ready = time.monotonic() - began
body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}]}
request = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/digits/infer", json.dumps(body).encode())
with urllib.request.urlopen(request, timeout=120) as r:
    answer = json.load(r)
print("answer:", json.dumps(answer))
assert [o["name"] for o in answer["outputs"]] == ["probabilities", "label"], answer
print(f"ready {ready:.1f} s after the command (aarch64 under qemu)")
PYTHON
kill -INT $server
for _ in $(seq 1 240); do kill -0 $server 2>/dev/null || break; sleep 0.5; done
if kill -0 $server 2>/dev/null; then kill -KILL $server; echo "the emulated server did not stop on SIGINT in 120 s"; exit 1; fi
wait $server
trap - EXIT
echo "linux/aarch64 under qemu: the standalone server answered one V2 request and stopped cleanly"
