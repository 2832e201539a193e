"""Triton's JSON documents (model configuration, statistics) from core types; the HTTP
adapter sends them as they are, the gRPC adapter parses them into its messages."""

from __future__ import annotations

from typing import Any

from serving.types import DurationStat, ModelDescription, ModelStats

_BACKENDS = {"onnxruntime_onnx": "onnxruntime", "pytorch_libtorch": "pytorch"}
"""Triton's backend name for a platform (python, sklearn, xgboost, lightgbm and pipeline keep theirs)."""


def _config_type(datatype: str) -> str:
    return "TYPE_" + ("STRING" if datatype == "BYTES" else datatype)


def config_json(d: ModelDescription) -> dict[str, Any]:
    """The subset of Triton's ``ModelConfig`` that clients such as perf_analyzer read."""
    kind, versions = d.version_policy
    if kind == "all":
        vp: dict[str, Any] = {"all": {}}
    elif kind == "specific":
        vp = {"specific": {"versions": list(versions)}}
    else:
        vp = {"latest": {"num_versions": versions[0]}}
    cfg: dict[str, Any] = {
        "name": d.name,
        "platform": d.platform,
        "backend": _BACKENDS.get(d.platform, d.platform),
        "version_policy": vp,
        "max_batch_size": d.max_batch_size,
        "input": [{"name": s.name, "data_type": _config_type(s.datatype), "dims": list(s.shape)} for s in d.inputs],
        "output": [{"name": s.name, "data_type": _config_type(s.datatype), "dims": list(s.shape)} for s in d.outputs],
        "instance_group": [
            {"name": d.name, "kind": "KIND_GPU" if d.device == "gpu" else "KIND_CPU", "count": d.instances}
        ],
    }
    if d.max_batch_size:
        cfg["dynamic_batching"] = {"max_queue_delay_microseconds": d.max_queue_delay_us}
    return cfg


def _duration(d: DurationStat) -> dict[str, int]:
    return {"count": d.count, "ns": d.ns}


def stats_json(stats: list[ModelStats]) -> dict[str, Any]:
    """Triton's statistics extension JSON."""
    rows = []
    for s in stats:
        rows.append(
            {
                "name": s.name,
                "version": s.version,
                "last_inference": s.last_inference_ms,
                "inference_count": s.inference_count,
                "execution_count": s.execution_count,
                "inference_stats": {
                    "success": _duration(s.success),
                    "fail": _duration(s.fail),
                    "queue": _duration(s.queue),
                    "compute_input": _duration(s.compute_input),
                    "compute_infer": _duration(s.compute_infer),
                    "compute_output": _duration(s.compute_output),
                },
                "batch_stats": [
                    {
                        "batch_size": b.batch_size,
                        "compute_input": _duration(b.compute_input),
                        "compute_infer": _duration(b.compute_infer),
                        "compute_output": _duration(b.compute_output),
                    }
                    for _, b in sorted(s.batch_stats.items())
                ],
            }
        )
    return {"model_stats": rows}
