"""A real Prometheus (Debian's `prometheus`) for tests: the shipped alert rules with their
durations scaled down (``for:`` to 2 s, rate windows to 15 s), scraping given targets every
second."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from metrics_scrape import CONFIGS

from server_process import free_port


def scaled_rules(text: str) -> str:
    text = re.sub(r"for: \d+[smh]", "for: 2s", text)
    return re.sub(r"\[(5m|15m)\]", "[15s]", text)


def get(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            body = r.read()
            return json.loads(body) if body.startswith(b"{") else body
    except (OSError, ValueError):
        return None


def wait_for(cond: Callable[[], bool], timeout_s: float, message: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.5)
    raise AssertionError(message)


def alerts(url: str) -> dict[tuple[str, str], str]:
    """(alert name, model) -> state, of every pending or firing alert."""
    doc = get(f"{url}/api/v1/alerts") or {"data": {"alerts": []}}
    return {(a["labels"]["alertname"], a["labels"].get("model", "")): a["state"] for a in doc["data"]["alerts"]}


@contextmanager
def running_prometheus(metrics_port: int, root: Path) -> Iterator[str]:
    """Prometheus scraping ``127.0.0.1:metrics_port`` (job ``serving``); yields its URL."""
    binary = shutil.which("prometheus")
    assert binary, "Prometheus is not installed: apt-get install prometheus (make test does it)"
    (root / "alerts.yml").write_text(scaled_rules((CONFIGS / "prometheus" / "alerts.yml").read_text()))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(root / "alerts.yml")],
        "scrape_configs": [{"job_name": "serving", "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}],
    }
    (root / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (root / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={root / 'prometheus.yml'}",
            f"--storage.tsdb.path={root / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: get(f"{url}/-/ready") is not None, 30, "Prometheus never became ready")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
