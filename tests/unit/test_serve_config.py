from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml
from ray.serve import Application
from ray.serve.schema import ServeDeploySchema

from serving.config.server import NO_FILE_CHECKS, ReplicasConfig, ServerSettings
from serving.deploy.app import REPLICA_ENV, AppArgs, build_app, deployment_options, parse_app_args
from serving.deploy.server import failure_reason, preload_modules
from serving.errors import ConfigError
from serving.repository import scan_repository

from models import add_model

CONFIG = Path(__file__).parents[2] / "configs" / "serve.yaml"


def test_serve_yaml_is_a_valid_ray_serve_config_without_proxies() -> None:
    schema = ServeDeploySchema.model_validate(yaml.safe_load(CONFIG.read_text()))
    assert schema.proxy_location == "Disabled"
    (app,) = schema.applications
    assert app.import_path == "serving.deploy.app:build_app"
    args = parse_app_args(app.args, NO_FILE_CHECKS)  # ours, typo-free, and passing the server's checks
    assert args.host == "0.0.0.0" and args.api_keys is not None


def test_fixed_replicas_from_settings_and_model_resources(tmp_path: Path) -> None:
    add_model(tmp_path, "a", versions=(1,), resources={"replicas": 2, "num_cpus": 0.5})
    add_model(tmp_path, "b", versions=(1,), resources={"num_cpus": 0.25, "num_gpus": 0.5})
    assert isinstance(build_app({"repository": str(tmp_path)}), Application)
    options = deployment_options(scan_repository(tmp_path), ReplicasConfig(), drain_seconds=10)
    assert options["num_replicas"] == 2
    assert "autoscaling_config" not in options
    actor = options["ray_actor_options"]
    assert (actor["num_cpus"], actor["num_gpus"]) == (0.75, 0.5)
    assert actor["runtime_env"]["env_vars"].items() >= REPLICA_ENV.items()
    assert options["graceful_shutdown_timeout_s"] > 10
    assert options["max_surge_percent"] == 25  # replacements listen before old replicas drain
    # A local Ray started by `serving serve` passes the environment on by itself.
    local = deployment_options(scan_repository(tmp_path), ReplicasConfig(), drain_seconds=10, inherit_env=True)
    assert "runtime_env" not in local["ray_actor_options"]


def test_autoscaling_replicas_use_the_in_flight_policy(tmp_path: Path) -> None:
    add_model(tmp_path, "a", versions=(1,))
    replicas = ReplicasConfig(min=1, max=3, target_in_flight=8, max_per_node=1)
    options = deployment_options(scan_repository(tmp_path), replicas, drain_seconds=2)
    auto = options["autoscaling_config"]
    assert (auto["min_replicas"], auto["max_replicas"]) == (1, 3)
    assert auto["policy"]["policy_kwargs"] == {"target_in_flight": 8}
    assert options["max_replicas_per_node"] == 1
    assert "num_replicas" not in options
    # Ray's own schema accepts what we hand it.
    from ray.serve.config import AutoscalingConfig

    AutoscalingConfig.model_validate(auto)


def test_build_app_rejects_bad_args_and_repositories(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="repositry"):
        build_app({"repositry": str(tmp_path)})
    with pytest.raises(ConfigError, match=r"replicas.max|must be >="):
        build_app({"repository": str(tmp_path), "replicas": {"min": 3, "max": 2}})
    with pytest.raises(ConfigError, match="surge_percent"):
        build_app({"repository": str(tmp_path), "replicas": {"surge_percent": 150}})
    with pytest.raises(ConfigError, match="does not exist"):
        build_app({"repository": str(tmp_path / "missing")})


def test_local_ray_workers_preload_the_replica_and_only_the_frameworks_in_use(tmp_path: Path) -> None:
    add_model(tmp_path, "a", versions=(1,))
    modules = preload_modules(scan_repository(tmp_path))
    assert modules == ["serving.deploy.app", "serving.runtime.onnx"]  # no torch for an ONNX-only repository
    for name in modules:
        importlib.import_module(name)


def test_grpc_limits_reach_the_server_options() -> None:
    from serving.config.server import ServerSettings
    from serving.protocol.grpc_frontends import grpc_server_options

    options = dict(grpc_server_options(1 << 20, 7))
    assert options["grpc.max_receive_message_length"] == 1 << 20 == options["grpc.max_send_message_length"]
    assert options["grpc.max_concurrent_streams"] == 7 and options["grpc.so_reuseport"] == 1
    assert (
        AppArgs.model_validate({"repository": "/m", "grpc_max_concurrent_streams": 9}).grpc_max_concurrent_streams == 9
    )
    with pytest.raises(ValueError):
        ServerSettings(grpc_max_concurrent_streams=0)


@pytest.mark.parametrize(
    ("args", "refusal"),
    [
        ({"host": "0.0.0.0"}, "without API keys would serve anyone"),
        ({"protect_health": True}, "protect_health needs API keys"),
        ({"http_port": 8001}, "must differ"),
        ({"api_keys": "/nowhere/keys.yaml"}, "does not exist"),
        ({"drain_secnds": 3}, "drain_secnds"),
    ],
)
def test_serve_run_and_serve_deploy_apply_the_servers_own_checks(
    tmp_path: Path, args: dict[str, object], refusal: str
) -> None:
    """``serve run serving.deploy.app:build_app`` and ``serve deploy configs/serve.yaml`` go
    through build_app: the same settings model as ``serving serve``, with the same refusals."""
    add_model(tmp_path, "a", versions=(1,))
    with pytest.raises(ConfigError, match=refusal):
        build_app({"repository": str(tmp_path), **args})
    with pytest.raises(Exception, match=refusal):
        ServerSettings(repository=tmp_path, **args)  # type: ignore[arg-type]


def test_the_app_takes_every_server_setting() -> None:
    """One settings model: nothing a server setting can say is missing from the application's arguments."""
    assert set(ServerSettings.model_fields) <= set(AppArgs.model_fields)


def test_a_failed_deploy_is_reported_by_its_reason_not_serves_traceback() -> None:
    message = (
        "Deploying app 'serving' failed with exception:\nTraceback (most recent call last):\n"
        '  File "/ray/serve/_private/replica.py", line 9, in initialize\n    await self._user_callable()\n'
        "serving.errors.ConfigError: /models/digits/model.yaml: platform: Input should be 'onnx'\n"
    )
    assert (
        failure_reason(message)
        == "serving.errors.ConfigError: /models/digits/model.yaml: platform: Input should be 'onnx'"
    )
    assert failure_reason("The deployment failed to start 3 times in a row.") == (
        "The deployment failed to start 3 times in a row."
    )
    assert "Ray logs" in failure_reason("")
