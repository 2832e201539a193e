"""An Alertmanager webhook receiver that starts a retraining job for each firing
ServingLiveAccuracyDrop alert: ``python retrain_webhook.py --port 9095 -- COMMAND ...``.

The command runs with the alert's model and version in ``SERVING_MODEL`` / ``SERVING_VERSION``
(for example a script that trains on the prediction log's labelled rows, runs ``serving
evaluate`` and ``serving promote``). One job per model at a time; the answer says what was started.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ALERT = "ServingLiveAccuracyDrop"


class Jobs:
    def __init__(self, command: list[str]) -> None:
        self.command = command
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        self.lock = threading.Lock()

    def start(self, model: str, version: str) -> bool:
        with self.lock:
            job = self.running.get(model)
            if job is not None and job.poll() is None:
                return False  # this model is being retrained already
            env = {**os.environ, "SERVING_MODEL": model, "SERVING_VERSION": version}
            self.running[model] = subprocess.Popen(self.command, env=env)
            return True


def handler(jobs: Jobs) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            try:
                doc = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                alerts = [a for a in doc["alerts"] if a["status"] == "firing" and a["labels"]["alertname"] == ALERT]
            except (ValueError, KeyError, TypeError) as exc:
                self._answer(400, {"error": f"not an Alertmanager webhook payload: {exc}"})
                return
            started = [a["labels"]["model"] for a in alerts if jobs.start(a["labels"]["model"], a["labels"]["version"])]
            self._answer(200, {"started": started})

        def _answer(self, code: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9095)
    parser.add_argument("command", nargs="+", help="the retraining job (after --)")
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), handler(Jobs(args.command)))
    print(f"retraining webhook on http://{args.host}:{server.server_port}/alert", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
