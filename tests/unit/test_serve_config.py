from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve import Application
from ray.serve.schema import ServeDeploySchema

from serving.deploy.app import GRPC_SERVICER_FUNCTIONS, build_app, deployment_options
from serving.errors import ConfigError
from serving.repository import scan_repository

from models import add_model

CONFIG = Path(__file__).parents[2] / "configs" / "serve.yaml"


def test_serve_yaml_is_a_valid_ray_serve_config() -> None:
    schema = ServeDeploySchema.model_validate(yaml.safe_load(CONFIG.read_text()))
    assert schema.grpc_options is not None
    assert schema.grpc_options.grpc_servicer_functions == GRPC_SERVICER_FUNCTIONS
    (app,) = schema.applications
    assert app.import_path == "serving.deploy.app:build_app"


def test_build_app_sizes_the_deployment_from_model_resources(tmp_path: Path) -> None:
    add_model(tmp_path, "a", versions=(1,), resources={"replicas": 2, "num_cpus": 0.5})
    add_model(tmp_path, "b", versions=(1,), resources={"num_cpus": 0.25, "num_gpus": 0.5})
    assert isinstance(build_app({"repository": str(tmp_path)}), Application)
    options = deployment_options(scan_repository(tmp_path))
    assert options == {"num_replicas": 2, "ray_actor_options": {"num_cpus": 0.75, "num_gpus": 0.5}}


def test_build_app_rejects_bad_args_and_repositories(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="repositry"):
        build_app({"repositry": str(tmp_path)})
    with pytest.raises(ConfigError, match="does not exist"):
        build_app({"repository": str(tmp_path / "missing")})
