"""``serving`` command line: ``serve`` (online server) and ``demo-repo``."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from serving.config import load_settings
from serving.errors import ConfigError


def _banner(host: str, http_port: int, grpc_port: int) -> str:
    return f"""
serving is ready: HTTP http://{host}:{http_port}  gRPC {host}:{grpc_port}

  curl -s http://{host}:{http_port}/v2/models/digits
  curl -s -X POST http://{host}:{http_port}/v2/models/digits/infer -H 'Content-Type: application/json' \\
    -d '{{"inputs":[{{"name":"input","datatype":"FP32","shape":[1,64],"data":[{",".join(["0.5"] * 64)}]}}]}}'

  python -c "import numpy as np, tritonclient.grpc as g; c = g.InferenceServerClient('{host}:{grpc_port}'); \\
i = g.InferInput('input', [1, 64], 'FP32'); i.set_data_from_numpy(np.full((1, 64), 0.5, np.float32)); \\
print(c.infer('digits', [i]).as_numpy('label'))"

Press Ctrl-C to stop.
"""


def _serve(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(
            args.config,
            repository=args.repository,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            host=args.host,
            ray_address=args.address,
            fast_path=False if args.no_fast_path else None,
        )
    except ConfigError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    from serving.deploy import server

    stop_event = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop_event.set())
    try:
        seconds = server.start(settings)
    except ConfigError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    try:
        print(f"started in {seconds:.1f}s", flush=True)
        print(_banner(settings.host, settings.http_port, settings.grpc_port), flush=True)
        stop_event.wait()
        print("stopping...", flush=True)
    finally:
        server.stop()
    print("stopped", flush=True)
    return 0


def _demo_repo(args: argparse.Namespace) -> int:
    from serving.demo import build_demo_repository

    build_demo_repository(args.root, reference=args.reference)
    print(f"demo model repository written to {args.root}")
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="serving", description="Open Inference Protocol model server on Ray Serve")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve a model repository over HTTP and gRPC")
    s.add_argument("--repository", type=Path, help="model repository root (default ./model_repository)")
    s.add_argument("--config", type=Path, help="server settings YAML (keys of ServerSettings)")
    s.add_argument("--host", help="HTTP bind address (default 127.0.0.1)")
    s.add_argument("--http-port", type=int, help="HTTP port (default 8000)")
    s.add_argument("--grpc-port", type=int, help="gRPC port (default 8001)")
    s.add_argument("--address", help="join this Ray cluster instead of starting a local one (or RAY_ADDRESS)")
    s.add_argument("--no-fast-path", action="store_true", help="use Serve's Python proxy instead of HAProxy")
    s.set_defaults(func=_serve)
    d = sub.add_parser("demo-repo", help="build the demo model repository")
    d.add_argument("root", type=Path)
    d.add_argument("--reference", action="store_true", help="also build the benchmark's reference MLP")
    d.set_defaults(func=_demo_repo)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if getattr(args, "address", None) is None and args.command == "serve":
        import os

        args.address = os.environ.get("RAY_ADDRESS") or None
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
