"""`serving score` reading its input from an object store: a real S3 API server (moto's, in its own
process on 127.0.0.1), a bucket made and filled with boto3, and the scores compared with the same
job over the same files on local disk. Object-store outputs are refused with a clear message."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from serving.demo import build_demo_dataset

pytestmark = pytest.mark.integration

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        until = time.monotonic() + 30
        while True:  # up once it accepts connections
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < until, "moto_server did not start"
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(10)


def score(endpoint: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}
    return subprocess.run(
        [sys.executable, "-m", "serving.cli", "score", *args], capture_output=True, text=True, timeout=240, env=env
    )


def rows(out: Path) -> pa.Table:
    table = pads.dataset(out, format="parquet", partitioning="hive").to_table()
    return table.sort_by("image_id").select(["image_id", "label", "probabilities"])


def test_a_job_reads_its_input_from_s3_as_from_local_disk(s3_endpoint: str, repository: Path, tmp_path: Path) -> None:
    local = build_demo_dataset(tmp_path / "digits")
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        **{k.lower(): v for k, v in CREDENTIALS.items() if k != "AWS_REGION"},
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket="lake")
    uploaded = 0
    for path in sorted(local.rglob("*.parquet")):
        s3.upload_file(str(path), "lake", f"digits/{path.relative_to(local)}")
        uploaded += pq.read_metadata(path).num_rows
    common = ["--repository", str(repository), "--model", "digits:2"]
    from_s3 = score(s3_endpoint, *common, "--input", "s3://lake/digits/", "--output", str(tmp_path / "from-s3"))
    assert from_s3.returncode == 0, from_s3.stderr[-3000:]
    from_disk = score(s3_endpoint, *common, "--input", str(local), "--output", str(tmp_path / "from-disk"))
    assert from_disk.returncode == 0, from_disk.stderr[-3000:]
    a, b = rows(tmp_path / "from-s3"), rows(tmp_path / "from-disk")
    assert a.num_rows == uploaded and a.equals(b)


@pytest.mark.parametrize("output", ["s3://lake/scored/", "gs://lake/scored/", "hdfs://namenode/scored"])
def test_object_store_outputs_are_refused_with_a_reason(s3_endpoint: str, repository: Path, output: str) -> None:
    proc = score(s3_endpoint, "--repository", str(repository), "--model", "digits", "--input", "x", "--output", output)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "are not supported" in proc.stderr and "Traceback" not in proc.stderr
