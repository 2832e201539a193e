"""The images' Dockerfiles, parsed (no Docker engine here): base image, stages, user, entrypoint,
ports, healthcheck. Dockerfile.gpu (CUDA) and Dockerfile (CPU, amd64 and arm64, standalone)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile.gpu"
CPU_DOCKERFILE = ROOT / "Dockerfile"


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, args = line.partition(" ")
            out.append((op.upper(), args.strip()))
    return out


def stages(path: Path = DOCKERFILE) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for op, args in instructions(path):
        if op == "FROM":
            result.append([])
        if result:
            result[-1].append((op, args))
    return result


@pytest.fixture(scope="module")
def final() -> list[tuple[str, str]]:
    return stages()[-1]


def test_base_is_a_cuda_runtime_with_cudnn_matching_the_wheels() -> None:
    args = dict(a.split("=", 1) for op, a in instructions() if op == "ARG" and "=" in a)
    image = args["CUDA_IMAGE"]
    assert re.fullmatch(r"nvidia/cuda:12\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+", image), image
    cuda_minor = re.search(r"cuda:12\.(\d+)", image)
    index = re.search(r"download\.pytorch\.org/whl/cu12(\d)", DOCKERFILE.read_text())
    assert cuda_minor and index and cuda_minor.group(1) == index.group(1)  # torch's CUDA = the image's


def test_multi_stage_and_no_build_tools_in_the_runtime_stage(final: list[tuple[str, str]]) -> None:
    assert len(stages()) >= 2
    build_text = " ".join(a for _, a in stages()[0])
    assert "build-essential" in build_text and '".[gpu]"' in build_text
    runtime_text = " ".join(a for _, a in final)
    for tool in ("build-essential", "gcc", "python3-dev", "pip install"):
        assert tool not in runtime_text
    assert any(op == "COPY" and a.startswith("--from=build /opt/venv") for op, a in final)


def test_runs_as_a_non_root_user(final: list[tuple[str, str]]) -> None:
    users = [a for op, a in final if op == "USER"]
    assert users and users[-1] not in ("root", "0")


def test_entrypoint_serves_the_mounted_repository(final: list[tuple[str, str]]) -> None:
    entry = json.loads(next(a for op, a in final if op == "ENTRYPOINT"))
    cmd = json.loads(next(a for op, a in final if op == "CMD"))
    assert entry == ["serving", "serve"]
    assert cmd[cmd.index("--repository") + 1] == "/models"
    assert "0.0.0.0" in cmd
    assert cmd[cmd.index("--api-keys") + 1] == "/etc/serving/keys.yaml"  # open to the network only with keys
    assert any(op == "VOLUME" and "/models" in a for op, a in final)


def test_exposes_http_grpc_and_metrics_ports(final: list[tuple[str, str]]) -> None:
    ports = {p for op, a in final if op == "EXPOSE" for p in shlex.split(a)}
    assert ports >= {"8000", "8001", "8002"}


def test_healthcheck_asks_for_readiness(final: list[tuple[str, str]]) -> None:
    check = next(a for op, a in final if op == "HEALTHCHECK")
    assert "/v2/health/ready" in check
    assert "CMD" in check


def test_the_cpu_image_is_a_slim_python_for_both_architectures_serving_standalone() -> None:
    text = CPU_DOCKERFILE.read_text()
    args = dict(a.split("=", 1) for op, a in instructions(CPU_DOCKERFILE) if op == "ARG" and "=" in a)
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", args["PYTHON_IMAGE"]), args  # multi-arch official image
    assert "--platform linux/amd64,linux/arm64" in text  # the build command in its header
    build, final = stages(CPU_DOCKERFILE)[0], stages(CPU_DOCKERFILE)[-1]
    assert any(op == "RUN" and "--only-binary=:all:" in a and '".[${EXTRAS}]"' in a for op, a in build)
    assert args["EXTRAS"] == "onnx"  # no torch unless asked for
    assert any(op == "COPY" and a.startswith("--from=build /opt/venv") for op, a in final)
    assert not any(op == "RUN" and "pip install" in a for op, a in final)
    users = [a for op, a in final if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    entry = json.loads(next(a for op, a in final if op == "ENTRYPOINT"))
    cmd = json.loads(next(a for op, a in final if op == "CMD"))
    assert entry == ["serving", "serve"]
    assert cmd[0] == "--standalone" and cmd[cmd.index("--repository") + 1] == "/models"
    assert cmd[cmd.index("--api-keys") + 1] == "/etc/serving/keys.yaml"
    assert {p for op, a in final if op == "EXPOSE" for p in shlex.split(a)} >= {"8000", "8001", "8002"}
    assert "/v2/health/ready" in next(a for op, a in final if op == "HEALTHCHECK")
