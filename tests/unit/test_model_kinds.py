"""Python models, tabular models and pipelines in one process: a real LocalInferenceService over
real model files (the wire is tested in tests/integration/test_model_kinds.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from serving.config.model import ModelConfig
from serving.errors import ConfigError, DeadlineExceededError, InvalidInputError, ModelNotFoundError, ServingError
from serving.lifecycle.lineage import LINEAGE_FILE
from serving.offline.scorer import open_version, resolve_version
from serving.pipeline.condition import parse_condition
from serving.pipeline.graph import compile_graph
from serving.repository import load_model_entry
from serving.service.local import LocalInferenceService
from serving.types import InferenceRequest, Tensor

from models import PY_LARGE, PY_SMALL, PY_VERSIONED, SCALAR_X, SCALAR_Y, pipeline, python_model

Array = np.ndarray[Any, Any]


def x(*values: float) -> Array:
    return np.array(values, dtype=np.float32).reshape(-1, 1)


async def ask(svc: LocalInferenceService, model: str, values: Array, version: str = "", **params: Any) -> Array:
    request = InferenceRequest(model_name=model, model_version=version, inputs=[Tensor("x", "FP32", values)])
    request.parameters.update(params)
    return (await svc.infer(request)).outputs[0].data


def index(svc: LocalInferenceService) -> dict[tuple[str, str], Any]:
    return {(r.name, r.version): r for r in svc.repository_index()}


def steps_config(**extra: Any) -> ModelConfig:
    doc = {
        "platform": "pipeline",
        "max_batch_size": 8,
        "inputs": SCALAR_X,
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [1], "from": "large.y"}],
        "steps": [
            {"name": "small", "model": "py_small", "inputs": {"x": "x"}},
            {"name": "large", "model": "py_large", "inputs": {"x": "x"}, "when": "small.confidence < 0.6",
             "otherwise": {"y": "small.y"}},
        ],
    }  # fmt: skip
    doc.update(extra)
    return ModelConfig.model_validate(doc)


def test_conditions_parse_to_comparisons_and_nothing_else() -> None:
    c = parse_condition("max(small.probabilities) < 0.6")
    assert (c.func, c.source, c.op, c.value) == ("max", "small.probabilities", "<", 0.6)
    rows = c.rows(np.array([[0.5, 0.3], [0.9, 0.1]], dtype=np.float32))
    assert rows.tolist() == [True, False]
    assert parse_condition("kind == 'cat'").rows(np.array([[b"cat"], [b"dog"]], dtype=object)).tolist() == [True, False]
    for bad in ("__import__('os').system('x') < 1", "a.b <", "max(a.b) ~ 3", "sorted(a.b) < 1", "a.b < nan nan"):
        with pytest.raises(ConfigError):
            parse_condition(bad)


def test_a_pipeline_whose_wiring_names_nothing_earlier_is_refused_with_the_reason() -> None:
    good = steps_config()
    assert [s.name for s in compile_graph("p", good).steps] == ["small", "large"]
    unknown = steps_config(outputs=[{"name": "y", "datatype": "FP32", "shape": [1], "from": "huge.y"}])
    with pytest.raises(ConfigError, match="'huge.y'"):
        compile_graph("p", unknown)
    unfilled = steps_config(steps=[
        {"name": "small", "model": "py_small", "inputs": {"x": "x"}},
        {"name": "large", "model": "py_large", "inputs": {"x": "x"}, "when": "small.confidence < 0.6"},
    ])  # fmt: skip
    with pytest.raises(ConfigError, match="rows it skips"):
        compile_graph("p", unfilled)
    with pytest.raises(ValueError, match="need from"):
        ModelConfig.model_validate({**steps_config().model_dump(by_alias=True), "outputs": SCALAR_Y})


def repository_with_steps(root: Path) -> Path:
    python_model(
        root, "py_small", PY_SMALL, outputs=[*SCALAR_Y, {"name": "confidence", "datatype": "FP32", "shape": [1]}]
    )
    python_model(root, "py_large", PY_LARGE)
    return root


async def test_a_pipeline_that_does_not_type_check_is_unavailable_with_the_reason(tmp_path: Path) -> None:
    root = repository_with_steps(tmp_path)
    pipeline(root, "missing_step", steps=[{"name": "a", "model": "nowhere", "inputs": {"x": "x"}}],
             outputs=[{"name": "y", "datatype": "FP32", "shape": [1], "from": "a.y"}])  # fmt: skip
    pipeline(root, "wrong_type", inputs=[{"name": "x", "datatype": "INT64", "shape": [1]}],
             steps=[{"name": "a", "model": "py_large", "inputs": {"x": "x"}}],
             outputs=[{"name": "y", "datatype": "FP32", "shape": [1], "from": "a.y"}])  # fmt: skip
    pipeline(root, "good", steps=[{"name": "a", "model": "py_large", "inputs": {"x": "x"}}],
             outputs=[{"name": "y", "datatype": "FP32", "shape": [1], "from": "a.y"}])  # fmt: skip
    svc = LocalInferenceService.from_repository(root)
    try:
        rows = index(svc)
        assert (
            rows[("missing_step", "1")].state == "UNAVAILABLE"
            and "unknown model 'nowhere'" in rows[("missing_step", "1")].reason
        )
        assert (
            rows[("wrong_type", "1")].state == "UNAVAILABLE" and "INT64 where FP32" in rows[("wrong_type", "1")].reason
        )
        np.testing.assert_array_equal(await ask(svc, "good", x(1)), x(100))
    finally:
        await svc.close()


async def test_the_deadline_stops_a_pipeline_before_its_next_step(tmp_path: Path) -> None:
    root = repository_with_steps(tmp_path)
    slow = PY_SMALL.replace('x = inputs["x"]', 'x = inputs["x"]\n        time.sleep(0.3)').replace(
        "import numpy as np", "import time\n\nimport numpy as np"
    )
    python_model(root, "py_slow", slow, outputs=[*SCALAR_Y, {"name": "confidence", "datatype": "FP32", "shape": [1]}])
    pipeline(root, "slow_then_large", steps=[
        {"name": "slow", "model": "py_slow", "inputs": {"x": "x"}},
        {"name": "large", "model": "py_large", "inputs": {"x": "slow.y"}},
    ], outputs=[{"name": "y", "datatype": "FP32", "shape": [1], "from": "large.y"}])  # fmt: skip
    svc = LocalInferenceService.from_repository(root)
    try:
        before = svc.statistics("py_large")[0].execution_count
        with pytest.raises(DeadlineExceededError, match="deadline exceeded"):  # during 'slow' or before 'large'
            await ask(svc, "slow_then_large", x(1), timeout=100_000)  # 0.1 s, the first step takes 0.3 s
        assert svc.statistics("py_large")[0].execution_count == before
        np.testing.assert_array_equal(await ask(svc, "slow_then_large", x(1)), x(100))
    finally:
        await svc.close()


async def test_a_cancelled_pipeline_request_leaves_no_request_behind(tmp_path: Path) -> None:
    root = repository_with_steps(tmp_path)
    pipeline(root, "two", steps=[
        {"name": "small", "model": "py_small", "inputs": {"x": "x"}},
        {"name": "large", "model": "py_large", "inputs": {"x": "small.y"}},
    ], outputs=[{"name": "y", "datatype": "FP32", "shape": [1], "from": "large.y"}])  # fmt: skip
    svc = LocalInferenceService.from_repository(root)
    try:
        call = asyncio.ensure_future(ask(svc, "two", x(1)))
        await asyncio.sleep(0)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        versions = [svc.registry.get(m) for m in ("two", "py_small", "py_large")]
        assert [mv.active for mv in versions] == [0, 0, 0]
        np.testing.assert_array_equal(await ask(svc, "two", x(1)), x(100))
    finally:
        await svc.close()


async def test_a_load_of_changed_files_runs_the_new_code(tmp_path: Path) -> None:
    python_model(tmp_path, "changing", PY_VERSIONED.format(answer=1))
    svc = LocalInferenceService.from_repository(tmp_path)
    try:
        assert (await ask(svc, "changing", x(0)))[0, 0] == 1
        (tmp_path / "changing" / "1" / "model.py").write_text(PY_VERSIONED.format(answer=7))
        await svc.registry.load_version(load_model_entry(tmp_path / "changing"), 1)
        assert (await ask(svc, "changing", x(0)))[0, 0] == 7
    finally:
        await svc.close()


async def test_a_constructor_that_raises_leaves_the_version_unavailable_with_the_reason(tmp_path: Path) -> None:
    python_model(tmp_path, "ctor", {1: PY_VERSIONED.format(answer=1), 2: "class Model:\n    def __init__(self, c):\n        raise ValueError('no weights')\n    def predict(self, i):\n        return i\n"},
                 version_policy={"all": True})  # fmt: skip
    svc = LocalInferenceService.from_repository(tmp_path)
    try:
        rows = index(svc)
        assert rows[("ctor", "2")].state == "UNAVAILABLE"
        assert "Model(context) raised ValueError: no weights" in rows[("ctor", "2")].reason
        assert (await ask(svc, "ctor", x(0), version="1"))[0, 0] == 1
    finally:
        await svc.close()


def test_lineage_covers_model_py_and_the_files_it_lists(tmp_path: Path) -> None:
    from serving.control.tools import record_lineage

    python_model(tmp_path, "with_files", PY_VERSIONED.format(answer=1), python={"files": ["weights.txt"]})
    (tmp_path / "with_files" / "1" / "weights.txt").write_text("1 2 3")
    record_lineage(tmp_path, "with_files:1")
    lineage = yaml.safe_load((tmp_path / "with_files" / "1" / LINEAGE_FILE).read_text())
    assert lineage["artifact"]["file"] == "model.py" and set(lineage["artifact"]["files"]) == {"weights.txt"}
    entry, version = resolve_version(tmp_path, "with_files:1")
    from serving.registry.versions import ModelRegistry

    mv = ModelRegistry().new_version(entry, version)
    mv.open()  # the recorded sha256s match
    mv.instance.unload()
    (tmp_path / "with_files" / "1" / "weights.txt").write_text("4 5 6")
    mv = ModelRegistry().new_version(entry, version)
    with pytest.raises(ConfigError, match="weights.txt sha256"):
        mv.open()


def test_batch_scoring_runs_a_pipeline_with_the_same_branches_as_online(tmp_path: Path) -> None:
    root = repository_with_steps(tmp_path)
    pipeline(root, "branchy", **{k: v for k, v in steps_config().model_dump(by_alias=True, exclude_defaults=True).items()
                                 if k in ("steps", "outputs")})  # fmt: skip
    entry, version = resolve_version(root, "branchy")
    instance = open_version(entry, version)
    try:
        out = instance.predict({"x": x(0.1, 0.9, 0.5)})
        np.testing.assert_allclose(out["y"], x(10, 0.9, 50), rtol=1e-6)
    finally:
        instance.unload()


async def test_concurrent_requests_run_through_the_steps_together_each_with_its_own_branch(tmp_path: Path) -> None:
    """Requests of one loop turn go through the steps as one set of rows (pipeline/coalesce.py):
    each still gets the branch its own rows took, a row failed by a step fails only its request,
    and a request larger than the others runs beside them."""
    root = repository_with_steps(tmp_path)
    failing = PY_LARGE.replace(
        'return {"y": inputs["x"] * 100.0}',
        """x = inputs["x"]
        return {"y": x * 100.0, "_errors": ["bad" if v == 0.25 else None for v in x[:, 0]]}""",
    )
    python_model(root, "py_large", failing)
    pipeline(root, "branchy", **{k: v for k, v in steps_config().model_dump(by_alias=True, exclude_defaults=True).items()
                                 if k in ("steps", "outputs")})  # fmt: skip
    svc = LocalInferenceService.from_repository(root)
    try:
        values = [0.1, 0.9, 0.5, 0.7, 0.25, 0.3, 0.95] * 6
        calls = [ask(svc, "branchy", x(v)) for v in values] + [ask(svc, "branchy", x(0.2, 0.8))]
        answers = await asyncio.gather(*calls, return_exceptions=True)
        for v, answer in zip(values, answers, strict=False):
            if v == 0.25:
                assert isinstance(answer, InvalidInputError) and "step 'large': bad" in answer.message
            else:
                assert isinstance(answer, np.ndarray)
                np.testing.assert_allclose(answer, x(v * 100 if v < 0.6 else v), rtol=1e-6)
        np.testing.assert_allclose(answers[-1], x(20, 0.8), rtol=1e-6)  # type: ignore[arg-type]
        assert svc.registry.get("branchy").active == 0
    finally:
        await svc.close()


async def test_row_errors_of_a_python_model_fail_only_their_own_request(tmp_path: Path) -> None:
    code = PY_SMALL.replace(
        'return {"y": x, "confidence": x}',
        'return {"y": x, "confidence": x, "_errors": ["bad" if v == 13 else None for v in x[:, 0]]}',
    )
    python_model(tmp_path, "rows", code, outputs=[*SCALAR_Y, {"name": "confidence", "datatype": "FP32", "shape": [1]}],
                 dynamic_batching={"max_queue_delay_ms": 50})  # fmt: skip
    svc = LocalInferenceService.from_repository(tmp_path)
    try:
        started = time.monotonic()
        results = await asyncio.gather(*(ask(svc, "rows", x(v)) for v in (1, 13, 3)), return_exceptions=True)
        assert time.monotonic() - started < 30
        assert isinstance(results[1], InvalidInputError) and "row 0: bad" in results[1].message
        np.testing.assert_array_equal(results[0], x(1))
        np.testing.assert_array_equal(results[2], x(3))
        assert svc.statistics("rows")[0].execution_count == 1  # one batch held all three
    finally:
        await svc.close()


async def test_a_shadow_pipeline_version_gets_copies_that_are_compared(tmp_path: Path) -> None:
    """Version 2 of a pipeline shadows version 1: copies run through the steps' batchers, are
    compared with the answer, and counted; the client gets version 1's answer."""
    from serving.lifecycle.routing import ModelRouting
    from serving.registry.versions import ModelRegistry
    from serving.telemetry.metrics import SHADOW_AGREEMENTS, SHADOW_REQUESTS, MemoryMetrics

    root = repository_with_steps(tmp_path)
    pipeline(root, "shadowed", version_policy={"all": True}, steps=[{"name": "a", "model": "py_large", "inputs": {"x": "x"}}],
             outputs=[{"name": "y", "datatype": "FP32", "shape": [1], "from": "a.y"}])  # fmt: skip
    (root / "shadowed" / "2").mkdir()
    metrics = MemoryMetrics()
    svc = LocalInferenceService(ModelRegistry(metrics))
    from serving.repository import scan_repository

    svc.registry.load_entries(scan_repository(root))
    svc.registry.routing["shadowed"] = ModelRouting(shadow=2, weights={1: 100})
    try:
        for _ in range(5):
            np.testing.assert_array_equal(await ask(svc, "shadowed", x(1)), x(100))
        for _ in range(100):
            if metrics.values.get((SHADOW_REQUESTS.name, ("shadowed", "2", "compared")), 0) == 5:
                break
            await asyncio.sleep(0.01)
        assert metrics.values[(SHADOW_REQUESTS.name, ("shadowed", "2", "compared"))] == 5
        assert metrics.values[(SHADOW_AGREEMENTS.name, ("shadowed", "2"))] == 5
    finally:
        await svc.close()


def test_batch_scoring_resolves_an_alias_step_through_the_serving_state_it_is_given(tmp_path: Path) -> None:
    python_model(tmp_path, "plus", {1: PY_VERSIONED.format(answer=1), 2: PY_VERSIONED.format(answer=2)},
                 version_policy={"all": True})  # fmt: skip
    pipeline(tmp_path, "via_alias", steps=[{"name": "p", "model": "plus@production", "inputs": {"x": "x"}}],
             outputs=[{"name": "y", "datatype": "FP32", "shape": [1], "from": "p.y"}])  # fmt: skip
    entry, version = resolve_version(tmp_path, "via_alias")
    with pytest.raises(ModelNotFoundError, match="plus@production: no such alias"):
        open_version(entry, version)
    for target in (1, 2):
        instance = open_version(entry, version, aliases={"plus": {"production": target}})
        try:
            assert instance.predict({"x": x(0)})["y"][0, 0] == target
        finally:
            instance.unload()


async def test_a_request_larger_than_a_steps_batch_is_sent_in_chunks_and_a_failed_chunk_fails_it(
    tmp_path: Path,
) -> None:
    root = repository_with_steps(tmp_path)  # the step models take at most 16 rows, the pipeline 64
    code = PY_LARGE.replace(
        'return {"y": inputs["x"] * 100.0}',
        'assert (inputs["x"] >= 0).all()\n        return {"y": inputs["x"] * 100.0}',
    )
    python_model(root, "py_fussy", code)
    pipeline(root, "wide", steps=[{"name": "a", "model": "py_fussy", "inputs": {"x": "x"}}],
             outputs=[{"name": "y", "datatype": "FP32", "shape": [1], "from": "a.y"}])  # fmt: skip
    svc = LocalInferenceService.from_repository(root)
    try:
        values = np.arange(40, dtype=np.float32)
        np.testing.assert_array_equal(await ask(svc, "wide", x(*values)), x(*(values * 100)))
        with pytest.raises(ServingError, match="step 'a'"):
            await ask(svc, "wide", x(*values[:39], -1))  # only the last chunk fails
        versions = [svc.registry.get(m) for m in ("wide", "py_fussy")]
        assert [mv.active for mv in versions] == [0, 0]
    finally:
        await svc.close()
