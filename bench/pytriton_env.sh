#!/usr/bin/env bash
# PyTriton (Triton's C++ front end with a Python model callable) in its own venv under
# bench/.pytriton: it pins its own tritonclient/protobuf, which must not meet ours. Idempotent.
set -euo pipefail
cd "$(dirname "$0")"
venv=.pytriton
# .installed-2: the image pipeline peer (bench/pytriton_image.py) needs Pillow too.
[ -f "$venv/.installed-2" ] && exit 0
${PYTHON:-python3.11} -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q nvidia-pytriton==0.7.0 onnxruntime numpy pillow
touch "$venv/.installed-2"
