#!/usr/bin/env bash
# Fetch perf_analyzer (inside the tritonclient 2.51.0 wheel: the newest whose binary runs on
# glibc 2.36) and the libraries it needs, into bench/.tools. Idempotent.
set -euo pipefail
cd "$(dirname "$0")"
tools=.tools
[ -x "$tools/bin/perf_analyzer" ] && [ -f "$tools/lib/libcudart.so.12" ] && ldconfig -p | grep -q libb64.so.0d && exit 0
mkdir -p "$tools/bin" "$tools/lib" "$tools/wheels"
pip=${PIP:-../.venv/bin/pip}
"$pip" download -q --no-deps -d "$tools/wheels" tritonclient==2.51.0 nvidia-cuda-runtime-cu12
unzip -o -q -j "$tools"/wheels/tritonclient-2.51.0-*.whl 'tritonclient-2.51.0.data/data/bin/perf_analyzer' -d "$tools/bin"
unzip -o -q -j "$tools"/wheels/nvidia_cuda_runtime_cu12-*.whl 'nvidia/cuda_runtime/lib/libcudart.so.12' -d "$tools/lib"
chmod +x "$tools/bin/perf_analyzer"
if ! ldconfig -p | grep -q libb64.so.0d; then
  apt-get update -qq && apt-get install -y -qq libb64-0d
fi
