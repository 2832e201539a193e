"""Model lifecycle on a real server (local Ray, two replicas), changed with the `serving` CLI
while Triton's clients keep both protocols busy: promote, load, traffic, rollback and unload
drop no request and every replica answers with the new routing within a second. Then the
release flow on a classifier (evaluate -> promote refused by a gate -> the better version
promoted), the audit log and the state across a restart, and drift watched live until the
shipped alert fires on a real Prometheus."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from metrics_scrape import scrape
from prometheus_process import alerts, running_prometheus, wait_for

from load_clients import Load, body_of
from models import add_model
from server_process import MODES, ServerProcess, mode_args

pytestmark = pytest.mark.integration

SERVING = str(Path(sys.executable).parent / "serving")


def cli(server: ServerProcess, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SERVING_SERVER": f"http://{server.http_url}"}
    done = subprocess.run([SERVING, *args], capture_output=True, text=True, timeout=120, env=env)
    assert (done.returncode == 0) == ok, f"serving {' '.join(args)}: rc {done.returncode}\n{done.stdout}{done.stderr}"
    return done


def answered_by(server: ServerProcess, model: str, version: str = "", width: int = 4, name: str = "x") -> str:
    """One request on a new connection (new connections spread over the replicas)."""
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    req = urllib.request.Request(f"http://{server.http_url}{path}", data=body_of(width, name), method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        return str(json.loads(r.read())["model_version"])


def answers_within_a_second(server: ServerProcess, version: str, n: int = 40) -> Counter[str]:
    """What ``n`` new connections get one second after a change returned."""
    time.sleep(1.0)
    return Counter(answered_by(server, "add", version) for _ in range(n))


def add_versions(repo: Path, *versions: int) -> None:
    add_model(repo, versions=versions, version_policy={"all": True}, gates={"require_evaluation": False})


@pytest.fixture(scope="module", params=MODES)
def two_replicas(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, Path]]:
    """Two Ray Serve replicas, or two standalone workers: every lifecycle change must reach both."""
    repo = tmp_path_factory.mktemp("lifecycle-repo")
    add_versions(repo, 1, 2)
    server = ServerProcess(repo, tmp_path_factory.mktemp("logs") / "server.log", args=mode_args(request.param, 2))
    server.start()
    yield server, repo
    server.stop()


def test_lifecycle_changes_under_load_fail_no_request_and_reach_every_replica_within_a_second(
    two_replicas: tuple[ServerProcess, Path],
) -> None:
    server, repo = two_replicas
    cli(server, "promote", "add", "1", "--alias", "production")
    time.sleep(1.0)  # every replica knows the alias before clients use it
    load = Load()
    for protocol in (load.http_keepalive, load.grpc):
        protocol(server, model="add", version="production", width=4)
        protocol(server, model="add", width=4)  # no version: the traffic split decides
    try:
        time.sleep(1.0)
        add_versions(repo, 3)  # a new version folder...
        cli(server, "load", "add", "3")  # ...loaded on every replica, warm before it serves
        cli(server, "promote", "add", "3", "--alias", "production")
        assert answers_within_a_second(server, "production") == {"3": 40}
        cli(server, "traffic", "add", "2=50", "3=50")
        split = answers_within_a_second(server, "", 80)
        assert set(split) == {"2", "3"}, split
        cli(server, "rollback", "add", "--alias", "production")
        assert answers_within_a_second(server, "production") == {"1": 40}
        cli(server, "traffic", "add", "3=100")
        cli(server, "unload", "add", "2")
        time.sleep(1.0)
        index = {
            r["version"]: r
            for r in json.loads(
                urllib.request.urlopen(
                    urllib.request.Request(f"http://{server.http_url}/v2/repository/index", data=b"{}", method="POST"),
                    timeout=10,
                ).read()
            )
        }
        assert index["2"]["state"] == "UNAVAILABLE" and index["2"]["reason"] == "unloaded"
        assert answers_within_a_second(server, "", 20) == {"3": 20}
    finally:
        load.stop()
    assert load.outcomes["failed"] == 0, (load.outcomes, load.kinds.most_common(5))
    assert load.outcomes["ok"] > 200 and {"1", "2", "3"} <= set(load.versions), (load.outcomes, load.versions)


def keepalive_answers(server: ServerProcess, n: int, connections: int = 4, **headers: str) -> Counter[str]:
    """Versions answering ``n`` unversioned requests over a few persistent connections."""
    seen: Counter[str] = Counter()
    conns = [http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30) for _ in range(connections)]
    try:
        for i in range(n):
            conn = conns[i % connections]
            conn.request("POST", "/v2/models/add/infer", body_of(4), {"Content-Type": "application/json", **headers})
            response = conn.getresponse()
            assert response.status == 200
            seen[json.loads(response.read())["model_version"]] += 1
    finally:
        for conn in conns:
            conn.close()
    return seen


def test_a_split_over_two_replicas_lands_within_3_points_and_sticky_keys_stay(
    two_replicas: tuple[ServerProcess, Path],
) -> None:
    server, _ = two_replicas
    cli(server, "traffic", "add", "1=90", "3=10")
    time.sleep(1.0)
    counts = keepalive_answers(server, 2000)
    assert set(counts) == {"1", "3"} and abs(counts["3"] / 2000 - 0.10) <= 0.03, counts
    cli(server, "traffic", "add", "1=50", "3=50", "--sticky-header", "x-user")
    time.sleep(1.0)
    first = {k: answered_by_key(server, k) for k in range(60)}
    assert set(first.values()) == {"1", "3"}
    for _ in range(2):  # new connections: any replica answers, each draws the same version for a key
        assert {k: answered_by_key(server, k) for k in range(60)} == first


def answered_by_key(server: ServerProcess, key: int) -> str:
    req = urllib.request.Request(
        f"http://{server.http_url}/v2/models/add/infer", data=body_of(4), method="POST", headers={"x-user": f"u{key}"}
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return str(json.loads(r.read())["model_version"])


def test_shadow_answers_are_dropped_and_its_agreement_appears_in_a_scrape(
    two_replicas: tuple[ServerProcess, Path],
) -> None:
    server, _ = two_replicas
    cli(server, "traffic", "add")  # no split: the newest ready version (3) answers
    cli(server, "shadow", "add", "1")
    time.sleep(1.0)
    assert keepalive_answers(server, 300) == {"3": 300}  # the client sees only the primary

    def shadow_series() -> dict[str, float]:
        samples = scrape(server.metrics_url)
        return {
            name: sum(v for n, labels, v in samples if n == name and labels.get("version") == "1")
            for name in (
                "ray_serving_shadow_rows_total",
                "ray_serving_shadow_agreements_total",
                "ray_serving_shadow_max_abs_diff_count",
            )
        }

    wait_for(lambda: shadow_series()["ray_serving_shadow_rows_total"] >= 300, 30, f"no shadow rows: {shadow_series()}")
    series = shadow_series()
    # y = x + version with equal inputs: v1 and v3 agree on the argmax of every row
    assert series["ray_serving_shadow_agreements_total"] == series["ray_serving_shadow_rows_total"]
    assert series["ray_serving_shadow_max_abs_diff_count"] >= 300
    cli(server, "shadow", "add", "off")


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path, Path]]:
    """The demo digits classifier (v1 logistic regression, v2 MLP) and its Parquet dataset."""
    from serving.demo import build_demo_dataset, build_digits

    root = tmp_path_factory.mktemp("classifier")
    repo, data = root / "repo", root / "data"
    build_digits(repo)
    build_demo_dataset(data)
    config = yaml.safe_load((repo / "digits" / "model.yaml").read_text())
    config["drift"] = {"sample_rate": 1.0, "window_s": 30, "min_rows": 200}
    (repo / "digits" / "model.yaml").write_text(yaml.safe_dump(config))
    server = ServerProcess(repo, root / "server.log")
    server.start()
    yield server, repo, data
    server.stop()


def lineage(repo: Path, version: int) -> dict[str, Any]:
    return dict(yaml.safe_load((repo / "digits" / str(version) / "lineage.yaml").read_text()))


def test_evaluate_gate_refusal_promotion_audit_and_restart(classifier: tuple[ServerProcess, Path, Path]) -> None:
    server, repo, data = classifier
    for v in (1, 2):
        out = cli(
            server,
            "evaluate",
            f"digits:{v}",
            "--repository",
            str(repo),
            "--data",
            str(data / "split=test"),
            "--label",
            "target",
        ).stdout
        assert "accuracy" in out and "macro_f1" in out and "log_loss" in out
    accuracy = {v: lineage(repo, v)["evaluation"]["metrics"]["accuracy"] for v in (1, 2)}
    worse, better = sorted(accuracy, key=accuracy.__getitem__)
    assert accuracy[worse] < accuracy[better], accuracy
    floor = (accuracy[worse] + accuracy[better]) / 2
    config = yaml.safe_load((repo / "digits" / "model.yaml").read_text())
    config["gates"] = {"min": {"accuracy": round(floor, 6)}, "max_regression": {"log_loss": 0.5}}
    (repo / "digits" / "model.yaml").write_text(yaml.safe_dump(config))

    refused = cli(server, "promote", "digits", str(worse), "--alias", "production", ok=False)
    assert "gate min.accuracy" in refused.stderr and f"{accuracy[worse]:.4g}" in refused.stderr
    cli(server, "promote", "digits", str(better), "--alias", "production")
    assert answered_by(server, "digits", "production", 64, "input") == str(better)
    models = cli(server, "models").stdout
    assert f"v{better} READY [production]" in models and "accuracy" in models

    server.stop()  # the state and the audit log survive a restart
    server.start()
    assert answered_by(server, "digits", "production", 64, "input") == str(better)
    audit = [json.loads(line) for line in cli(server, "audit").stdout.splitlines()]
    actions = [(e["action"], e["details"].get("version")) for e in audit]
    assert actions == [("evaluate", 1), ("evaluate", 2), ("promote-refused", worse), ("promote", better)]
    assert "gate min.accuracy" in audit[2]["details"]["gates_missed"][0]
    assert audit[3]["before"]["aliases"] == {} and audit[3]["after"]["aliases"] == {"production": better}


def drift_psi(server: ServerProcess) -> dict[str, float]:
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("ray_serving_drift_psi{"):
            feature = line.split('feature="')[1].split('"')[0]
            out[feature] = max(out.get(feature, 0.0), float(line.rsplit(" ", 1)[1]))
    return out


def drift_rows(server: ServerProcess) -> float:
    """Rows in the drift window of digits v1, as exported (the most any replica holds)."""
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    rows = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("ray_serving_drift_window_rows{") and 'model="digits"' in line and 'version="1"' in line
    ]
    return max(rows, default=0.0)


def settled_psi(server: ServerProcess, rows: int) -> dict[str, float]:
    """The PSI once the window holds every row sent (read earlier, it is the PSI of a partial
    sample: a sparse pixel over 200 of the rows reached 0.255 once), and the gauges have stopped
    moving (the rows and PSI gauges are set one after the other; a push may fall between)."""
    wait_for(lambda: drift_rows(server) >= rows, 30, f"the drift window never held the {rows} rows sent")
    previous: dict[str, float] = {}
    for _ in range(30):
        current = drift_psi(server)
        if current and current == previous:
            return current
        previous = current
        time.sleep(1.0)
    raise AssertionError(f"the drift gauges did not settle: {previous}")


def send_rows(server: ServerProcess, rows: np.ndarray[Any, Any]) -> None:
    for start in range(0, len(rows), 16):
        chunk = rows[start : start + 16]
        body = {
            "inputs": [
                {"name": "input", "datatype": "FP32", "shape": list(chunk.shape), "data": chunk.ravel().tolist()}
            ]
        }
        req = urllib.request.Request(
            f"http://{server.http_url}/v2/models/digits/versions/1/infer", data=json.dumps(body).encode(), method="POST"
        )
        urllib.request.urlopen(req, timeout=30).read()


def test_drift_stays_low_for_training_like_inputs_and_fires_the_alert_when_they_shift(
    classifier: tuple[ServerProcess, Path, Path], tmp_path: Path
) -> None:
    server, repo, data = classifier
    cli(server, "profile", "digits:1", "--repository", str(repo), "--data", str(data / "split=train"))
    cli(server, "load", "digits", "1")  # reloads the version with its new profile
    test_rows = np.stack(pq.read_table(data / "split=test").column("pixels").to_numpy(zero_copy_only=False)).astype(
        np.float32
    )
    with running_prometheus(server.metrics_port, tmp_path) as prometheus:
        send_rows(server, test_rows)
        wait_for(lambda: bool(drift_psi(server)), 30, "no drift gauge was exported")
        calm = settled_psi(server, len(test_rows))
        assert max(calm.values()) < 0.25, sorted(calm.items(), key=lambda kv: -kv[1])[:5]
        assert ("ServingInputDrift", "digits") not in alerts(prometheus)
        send_rows(server, np.tile(1.0 - test_rows, (3, 1)))  # inverted images: nothing like the training data
        wait_for(lambda: max(drift_psi(server).values()) > 0.25, 30, "PSI never rose for shifted inputs")
        wait_for(
            lambda: alerts(prometheus).get(("ServingInputDrift", "digits")) == "firing",
            60,
            f"ServingInputDrift never fired: {alerts(prometheus)}",
        )
