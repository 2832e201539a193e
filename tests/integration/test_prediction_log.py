"""The prediction log of a real server with two serving processes (Ray Serve replicas, or
standalone workers), under load from unmodified tritonclient over HTTP and gRPC: read by DuckDB
and pandas while it grows, one process SIGKILLed, the server stopped with Ctrl-C; then labels
sent with `serving feedback` and the live evaluation of `serving evaluate --from-log` checked
against the same computation done by hand on the log."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
import yaml
from test_faults import replica_pids

from load_clients import wait_until
from models import add_model
from server_process import MODES, ServerProcess, mode_args

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
    finally:
        answered.stop.set()
        code = server.stop()
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
