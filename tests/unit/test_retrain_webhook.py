"""examples/alertmanager/retrain_webhook.py as Alertmanager reaches it: a real process on a real
port, sent Alertmanager's webhook payload; the retraining command runs with the alert's model."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from server_process import free_port

SCRIPT = Path(__file__).parents[2] / "examples" / "alertmanager" / "retrain_webhook.py"


def post(port: int, body: bytes) -> tuple[int, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/alert", data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def payload(*alerts: tuple[str, str, str]) -> bytes:
    return json.dumps(
        {
            "version": "4",
            "status": "firing",
            "receiver": "retrain",
            "alerts": [
                {"status": status, "labels": {"alertname": name, "model": "digits", "version": "2"}}
                for name, status, _ in alerts
            ],
        }
    ).encode()


def test_a_firing_accuracy_alert_starts_one_retraining_job_for_its_model(tmp_path: Path) -> None:
    port = free_port()
    out = tmp_path / "started"
    job = f"import os, pathlib, time; pathlib.Path({str(out)!r}).write_text(os.environ['SERVING_MODEL'] + ' v' + os.environ['SERVING_VERSION']); time.sleep(5)"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--port", str(port), "--", sys.executable, "-c", job])
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status, body = post(port, payload(("ServingLiveAccuracyDrop", "firing", "")))
                break
            except urllib.error.URLError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert (status, body) == (200, {"started": ["digits"]})
        assert post(port, payload(("ServingLiveAccuracyDrop", "firing", ""))) == (200, {"started": []})  # running
        assert post(port, payload(("ServingOverloaded", "firing", ""))) == (200, {"started": []})
        assert post(port, b"{not json")[0] == 400
        deadline = time.monotonic() + 30
        while not out.exists():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert out.read_text() == "digits v2"
    finally:
        proc.terminate()
        proc.wait(10)


pytestmark = pytest.mark.timeout(60)
