"""The prediction log of a real server with two serving processes (Ray Serve replicas, or
standalone workers), under load from unmodified tritonclient over HTTP and gRPC: read by DuckDB
and pandas while it grows, one process SIGKILLed, the server stopped with Ctrl-C; then labels
sent with `serving feedback` and the live evaluation of `serving evaluate --from-log` checked
against the same computation done by hand on the log."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import duckdb
import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
import yaml
from metrics_scrape import scrape
from prometheus_process import alerts, get, running_prometheus, wait_for
from test_faults import replica_pids

from load_clients import wait_until
from models import add_model
from server_process import MODES, ServerProcess, free_port, mode_args

pytestmark = pytest.mark.integration

FLUSH_S = 1.0
SLACK_S = 2.0
"""Beyond flush_s, how late a row may be written on a 2-core machine busy with the load itself."""


def serving_command(*args: str) -> subprocess.CompletedProcess[str]:
    cli = str(Path(sys.executable).parent / "serving")
    return subprocess.run([cli, *args], capture_output=True, text=True, timeout=120)


def read_log(folder: Path) -> pd.DataFrame:
    return ds.dataset(folder / "model=add", partitioning="hive").to_table().to_pandas()


class Answered:
    """Requests answered OK, by V2 request id, with when their answer arrived."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self.failed = 0
        self.stop = threading.Event()
        self._lock = threading.Lock()

    def run(self, server: ServerProcess, protocol: str, name: str) -> None:
        x = np.full((1, 4), 0.5, np.float32)
        n = 0
        if protocol == "http":
            client: thttp.InferenceServerClient | tgrpc.InferenceServerClient = thttp.InferenceServerClient(
                server.http_url, connection_timeout=10, network_timeout=10
            )
            tensor = thttp.InferInput("x", [1, 4], "FP32")
        else:
            client = tgrpc.InferenceServerClient(server.grpc_url)
            tensor = tgrpc.InferInput("x", [1, 4], "FP32")
        tensor.set_data_from_numpy(x)
        while not self.stop.is_set():
            n += 1
            request_id = f"{name}-{n}"
            try:
                if protocol == "http":
                    client.infer("add", [tensor], request_id=request_id)
                else:
                    client.infer("add", [tensor], request_id=request_id, client_timeout=10)
            except Exception:
                with self._lock:
                    self.failed += 1
                time.sleep(0.05)
                continue
            with self._lock:
                self.at[request_id] = time.monotonic()
        client.close()


@pytest.mark.parametrize("mode", MODES)
def test_the_log_keeps_every_answer_through_a_kill_and_a_drain_and_feedback_scores_it(
    tmp_path: Path, mode: str
) -> None:
    repo, log_dir = tmp_path / "repo", tmp_path / "log"
    add_model(repo, versions=(3,), log={"flush_s": FLUSH_S, "flush_rows": 500})
    server = ServerProcess(repo, tmp_path / "server.log", args=(*mode_args(mode, 2), "--prediction-log", str(log_dir)))
    server.start()
    answered = Answered()
    try:
        # Feedback: labels for 40 answers, every 4th one wrong.
        http = thttp.InferenceServerClient(server.http_url)
        labels = []
        rng = np.random.default_rng(5)
        for i in range(40):
            tensor = thttp.InferInput("x", [1, 4], "FP32")
            tensor.set_data_from_numpy(rng.normal(size=(1, 4)).astype(np.float32))
            best = int(np.argmax(http.infer("add", [tensor], request_id=f"fb-{i}").as_numpy("y")))
            labels.append((f"fb-{i}", best if i % 4 else (best + 1) % 4))
        http.close()
        time.sleep(FLUSH_S + SLACK_S)  # both processes wrote what they answered
        pq.write_table(
            pa.table({"id": [i for i, _ in labels], "label": [v for _, v in labels]}), tmp_path / "l.parquet"
        )
        sent = serving_command(
            "feedback", "add", "--labels", str(tmp_path / "l.parquet"), "--server", f"http://{server.http_url}"
        )
        assert sent.returncode == 0, sent.stderr
        assert "40 labels kept; 40 matched" in sent.stdout, sent.stdout

        # Load from 4 clients; readers open the log as it grows; one serving process is SIGKILLed.
        threads = [
            threading.Thread(target=answered.run, args=(server, protocol, f"{protocol}{k}"), daemon=True)
            for protocol in ("http", "grpc")
            for k in range(2)
        ]
        for t in threads:
            t.start()
        counts = []
        for _ in range(3):
            time.sleep(1.0)
            pattern = f"{log_dir}/model=add/*/*/*/*.parquet"
            counts.append(duckdb.sql(f"select count(*) from read_parquet('{pattern}')").fetchall()[0][0])
            assert len(read_log(log_dir)) >= counts[-1]
        assert counts == sorted(counts) and counts[-1] > 0
        victim = replica_pids(server)[0]
        killed_at = time.monotonic()
        psutil.Process(victim).send_signal(signal.SIGKILL)
        wait_until(lambda: len(set(replica_pids(server)) - {victim}) == 2, 120, "a replacement", server)
        time.sleep(2.0)
        answered.stop.set()
        for t in threads:
            t.join(30)
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)  # drain: what waits to be written is written
        code = server.proc.wait(90)
    finally:
        answered.stop.set()
        server.stop()
    assert code == 0, server.log()

    # Every file is whole (a partial one would not open); nothing but Parquet files is visible.
    files = [p for p in log_dir.rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert files and all(p.suffix == ".parquet" for p in files)
    for p in files:
        pq.read_metadata(p)
    log = read_log(log_dir)
    counted = log.groupby("request_id").size()
    assert counted.max() == 1  # logged once each
    lost = sorted(answered.at[i] - killed_at for i in set(answered.at) - set(log.request_id))
    # Only rows the killed process had not written yet are lost: answered within flush_s (plus the
    # write's own time) before the kill, or while it died; everything else survived, the rest drained.
    assert all(-(FLUSH_S + SLACK_S) <= t <= SLACK_S for t in lost), lost
    assert len(answered.at) > 50
    print(
        f"{mode}: {len(answered.at)} answered under load, {answered.failed} failed around the kill; "
        f"log rows lost with the SIGKILLed process: {len(lost)}"
        + (f", answered {lost[0]:+.2f} .. {lost[-1]:+.2f} s from the kill" if lost else "")
    )

    # The live evaluation equals the same computation on the log and the labels by hand.
    evaluated = serving_command("evaluate", "add:3", "--from-log", str(log_dir), "--repository", str(repo))
    assert evaluated.returncode == 0, evaluated.stderr
    truth = dict(labels)
    mine = log[log.request_id.isin(truth)]
    predicted = np.argmax(np.stack(mine.y.to_numpy()), axis=1)
    expected = float(np.mean(predicted == mine.request_id.map(truth).to_numpy()))
    assert expected == 0.75
    live = yaml.safe_load((repo / "add" / "3" / "lineage.yaml").read_text())["live_evaluation"]
    assert live["metrics"]["accuracy"] == pytest.approx(expected)
    assert live["labelled"] == 40 and live["predictions"] == len(log)
    assert f"accuracy {expected:.4f}" in evaluated.stdout


def post_json(url: str, doc: object) -> tuple[int, object]:
    request = urllib.request.Request(url, data=json.dumps(doc).encode(), method="POST")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_bad_labels_fire_the_live_accuracy_alert_on_a_real_prometheus_and_good_ones_resolve_it(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    add_model(repo, versions=(3,))
    server = ServerProcess(
        repo, tmp_path / "server.log", args=("--standalone", "--prediction-log", str(tmp_path / "log"))
    )
    server.start()
    try:
        (tmp_path / "prometheus").mkdir()
        with running_prometheus(server.metrics_port, tmp_path / "prometheus") as prometheus:
            rng = np.random.default_rng(7)
            best: dict[tuple[str, int], int] = {}
            for r in range(75):  # 75 requests of 16 rows (the model's largest batch): 1,200 predictions
                x = rng.normal(size=(16, 4)).round(3)
                doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [16, 4], "data": x.ravel().tolist()}]}
                code, answer = post_json(f"http://{server.http_url}/v2/models/add/infer", doc | {"id": f"b{r}"})
                assert code == 200, answer
                y = np.asarray(answer["outputs"][0]["data"]).reshape(16, 4)  # type: ignore[index]
                best.update({(f"b{r}", i): int(np.argmax(y[i])) for i in range(16)})
            keys = sorted(best)
            wrong = [{"id": i, "row": n, "label": (best[(i, n)] + 1) % 4} for i, n in keys[:200]]
            right = [{"id": i, "row": n, "label": best[(i, n)]} for i, n in keys[200:]]
            # 200 labels, half of them wrong: accuracy 0.5 over >= 100 labelled predictions.
            code, answer = post_json(f"http://{server.http_url}/v2/models/add/feedback", wrong[:100] + right[:100])
            assert (code, answer) == (200, {"received": 200, "matched": 200, "unmatched": 0})

            def live_accuracy() -> float | None:
                doc = get(f"{prometheus}/api/v1/query?query=ray_serving_live_accuracy") or {}
                result = doc.get("data", {}).get("result", [])
                return float(result[0]["value"][1]) if result else None

            wait_for(lambda: live_accuracy() == 0.5, 30, "Prometheus never read the live accuracy")
            wait_for(lambda: alerts(prometheus).get(("ServingLiveAccuracyDrop", "add")) == "firing", 60, "no alert")
            # 900 good labels push the 100 wrong ones out of the window (the last 1,000 labelled).
            code, answer = post_json(f"http://{server.http_url}/v2/models/add/feedback", right[100:])
            assert code == 200 and answer["matched"] == 900  # type: ignore[index]
            wait_for(
                lambda: live_accuracy() == 1.0, 30, "the live accuracy did not recover"
            )  # the wrong 100 left the window
            wait_for(lambda: ("ServingLiveAccuracyDrop", "add") not in alerts(prometheus), 60, "did not resolve")
    finally:
        code = server.stop()
    assert code == 0, server.log()


S3 = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"}


def test_a_stalled_object_store_fills_the_queue_which_drops_and_counts_while_every_request_is_answered(
    tmp_path: Path,
) -> None:
    """The log's destination is a real S3 API server (moto), stopped with SIGSTOP while requests go
    on: writes stall, the queue fills, rows past it are dropped and counted; no request fails or
    waits on the log. Continued, the stalled rows are written: written + dropped = every row."""
    port = free_port()
    moto = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    repo = tmp_path / "repo"
    add_model(repo, versions=(3,), log={"flush_rows": 50, "flush_s": 0.2, "queue_rows": 300})
    destination = f"s3://log/pred?endpoint_override=127.0.0.1:{port}&scheme=http"
    server = ServerProcess(
        repo, tmp_path / "server.log", env=S3, args=("--standalone", "--prediction-log", destination)
    )
    try:
        wait_for(lambda: get(f"http://127.0.0.1:{port}/") is not None, 30, "moto_server did not start")
        boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", **_boto(S3)).create_bucket(Bucket="log")
        server.start()
        url = f"http://{server.http_url}/v2/models/add/infer"
        one = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1.0] * 4}]}
        for i in range(100):
            assert post_json(url, one | {"id": f"before-{i}"})[0] == 200
        wait_for(lambda: _log_rows(server)[0] == 100, 30, "the first 100 rows were not written")
        moto.send_signal(signal.SIGSTOP)
        slowest = 0.0
        for i in range(1000):
            began = time.monotonic()
            code, _ = post_json(url, one | {"id": f"stalled-{i}", "parameters": {"timeout": 2_000_000}})
            slowest = max(slowest, time.monotonic() - began)
            assert code == 200
        written, dropped = _log_rows(server)
        # The queue held at most 300 rows; the stalled write holds one batch besides: the 50 rows
        # that woke the writer and those answered before its thread took them (seen: 51).
        assert dropped >= 1000 - 300 - 2 * 50, (written, dropped)
        moto.send_signal(signal.SIGCONT)
        wait_for(lambda: sum(_log_rows(server)) == 1100, 60, "the stalled rows were not written")
        log = ds.dataset("log/pred/model=add", filesystem=_s3(port), format="parquet", partitioning="hive")
        ids = log.to_table(columns=["request_id"]).column("request_id").to_pylist()
        assert len(ids) == len(set(ids)) == 1100 - dropped
        code = server.stop()
        assert code == 0, server.log()
    finally:
        moto.send_signal(signal.SIGCONT)
        server.stop()
        moto.terminate()
        moto.wait(10)
    print(
        f"a stalled S3 destination: {dropped:.0f} of 1,000 rows dropped and counted, the rest written once it "
        f"continued; the slowest of the 1,000 requests took {slowest * 1000:.0f} ms"
    )


def _s3(port: int) -> pafs.S3FileSystem:
    return pafs.S3FileSystem(
        access_key="test", secret_key="test", region="us-east-1", endpoint_override=f"127.0.0.1:{port}", scheme="http"
    )


def _boto(env: dict[str, str]) -> dict[str, str]:
    return {
        "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
        "region_name": env["AWS_REGION"],
    }


def _log_rows(server: ServerProcess) -> tuple[float, float]:
    """(rows written, rows dropped) of the add model, from the server's /metrics."""
    series = scrape(server.metrics_url)
    written = sum(v for name, _, v in series if name == "ray_serving_log_rows_total")
    dropped = sum(v for name, _, v in series if name == "ray_serving_log_dropped_rows_total")
    return written, dropped
