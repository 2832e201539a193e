"""examples/kubernetes/rayservice.yaml: what can be checked without a Kubernetes cluster. (Its
validation against KubeRay's RayService CRD is not done here: that schema ships in no package
registry this project reaches; the manifest's header says so.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from ray.serve.schema import ServeDeploySchema

from serving.config.server import NO_FILE_CHECKS
from serving.deploy.app import REPLICA_ENV, parse_app_args

ROOT = Path(__file__).parents[2]
MANIFEST = ROOT / "examples" / "kubernetes" / "rayservice.yaml"


def manifest() -> dict[str, Any]:
    doc = yaml.safe_load(MANIFEST.read_text())
    assert isinstance(doc, dict)
    return doc


def test_the_serve_config_is_configs_serve_yaml_and_validates_as_ray_serve_and_serving_settings() -> None:
    doc = manifest()
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayService")
    serve_config = yaml.safe_load(doc["spec"]["serveConfigV2"])
    assert serve_config == yaml.safe_load((ROOT / "configs" / "serve.yaml").read_text())
    schema = ServeDeploySchema.model_validate(serve_config)
    assert schema.proxy_location == "Disabled"
    (app,) = schema.applications
    args = parse_app_args(app.args, NO_FILE_CHECKS)
    mounts = {
        m["mountPath"]
        for m in doc["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    }
    assert str(args.repository) in mounts and str(args.api_keys.parent) in mounts  # type: ignore[union-attr]


def test_every_pod_gets_the_replica_environment_and_workers_expose_the_servers_ports() -> None:
    cluster = manifest()["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == "2.60.0"
    args = parse_app_args(
        yaml.safe_load(manifest()["spec"]["serveConfigV2"])["applications"][0]["args"], NO_FILE_CHECKS
    )
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    for pod in pods:
        (container,) = pod["spec"]["containers"]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env.items() >= REPLICA_ENV.items()
        assert env["RAY_JEMALLOC_CONF"] == "tcache:false"
    for group in cluster["workerGroupSpecs"]:
        (container,) = group["template"]["spec"]["containers"]
        ports = {p["containerPort"] for p in container["ports"]}
        assert {args.http_port, args.grpc_port} <= ports
