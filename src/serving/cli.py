"""``serving`` command line: ``serve`` (online server), ``score`` (batch job), ``keys``, ``runs``,
``demo-repo``, and the model lifecycle commands (``cli_lifecycle``)."""

from __future__ import annotations

import argparse
import logging
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

from serving import cli_lifecycle
from serving.config.server import ServerSettings
from serving.errors import ConfigError, ServingError
from serving.standalone.settings_source import SettingsSource

LIFECYCLE_COMMANDS = (
    "models",
    "promote",
    "rollback",
    "traffic",
    "shadow",
    "load",
    "unload",
    "audit",
    "feedback",
    "lineage",
    "evaluate",
    "profile",
    "convert",
)


def _banner(host: str, http_port: int, grpc_port: int, metrics_port: int, tls: bool = False) -> str:
    scheme = "https" if tls else "http"
    return f"""
serving is ready: HTTP {scheme}://{host}:{http_port}  gRPC {host}:{grpc_port}{" (TLS)" if tls else ""}  metrics http://{host}:{metrics_port}/metrics

  curl -s {scheme}://{host}:{http_port}/v2/models/digits
  curl -s -X POST {scheme}://{host}:{http_port}/v2/models/digits/infer -H 'Content-Type: application/json' \\
    -d '{{"inputs":[{{"name":"input","datatype":"FP32","shape":[1,64],"data":[{",".join(["0.5"] * 64)}]}}]}}'

  {shlex.quote(sys.executable)} -c "import numpy as np, tritonclient.grpc as g; c = g.InferenceServerClient('{host}:{grpc_port}'); \\
i = g.InferInput('input', [1, 64], 'FP32'); i.set_data_from_numpy(np.full((1, 64), 0.5, np.float32)); \\
print(c.infer('digits', [i]).as_numpy('label'))"

Press Ctrl-C to stop.
"""


def _serve_source(args: argparse.Namespace) -> SettingsSource:
    """The settings' sources as the command line gives them (read again on SIGHUP)."""
    tls = _tls(args)
    overrides = {
        "repository": args.repository,
        "http_port": args.http_port,
        "grpc_port": args.grpc_port,
        "metrics_port": args.metrics_port,
        "host": args.host,
        "ray_address": args.address,
        "replicas": _replicas(args),
        "api_keys": args.api_keys,
        "insecure": args.insecure or None,
        "tls": {k: str(v) for k, v in tls.items()} if tls else None,
        "standalone": args.standalone or None,
        "ray_dashboard": args.ray_dashboard or None,
        "workers": args.workers,
        "prediction_log": {"destination": args.prediction_log} if args.prediction_log else None,
    }
    return SettingsSource(args.config, {k: str(v) if isinstance(v, Path) else v for k, v in overrides.items()})


def _load_serve_settings(args: argparse.Namespace) -> ServerSettings:
    return _serve_source(args).load()


def _tls(args: argparse.Namespace) -> dict[str, Path] | None:
    given = {"cert": args.tls_cert, "key": args.tls_key, "client_ca": args.tls_client_ca}
    chosen = {k: v for k, v in given.items() if v is not None}
    return chosen or None


def _print_ready(settings: ServerSettings, seconds: float) -> None:
    print(f"started in {seconds:.1f}s", flush=True)
    print(
        _banner(settings.host, settings.http_port, settings.grpc_port, settings.metrics_port, settings.tls is not None),
        flush=True,
    )
    from serving.protocol.grpc_frontends import chosen

    print(f"gRPC front end: {chosen(settings.grpc_frontend)}", flush=True)
    if settings.api_keys is None:
        print(f"access: OPEN, no API keys (bound to {settings.host}); --api-keys FILE to require keys", flush=True)
    else:
        print(f"access: API keys from {settings.api_keys} (health endpoints open)", flush=True)


def _serve(args: argparse.Namespace) -> int:
    from serving.protocol.grpc_frontends import chosen  # grpc: only the commands that serve import it

    try:
        settings = _load_serve_settings(args)
        chosen(settings.grpc_frontend)
    except ConfigError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # grpc_frontend: compiled, not built
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if settings.standalone:
        return _serve_standalone(_serve_source(args), settings)
    from serving.deploy import server

    stop_event = threading.Event()
    reload_event = threading.Event()

    def on_stop(*_: object) -> None:
        stop_event.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_stop)
    try:
        seconds = server.start(settings, verbose=args.verbose)
    except ConfigError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        server.stop(settings)
        return 2
    except ServingError as exc:  # the replicas failed to start: a reason, not a traceback
        print(f"error: {exc.message}", file=sys.stderr)
        server.stop(settings)
        return 1
    except BaseException:
        server.stop(settings)
        raise

    def on_sighup(*_: object) -> None:
        reload_event.set()
        stop_event.set()

    signal.signal(signal.SIGHUP, on_sighup)
    # ray.init installs Ray's own fatal-signal handler for SIGTERM (it logs and aborts): ours again,
    # so that SIGTERM drains like Ctrl-C.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_stop)
    try:
        _print_ready(settings, seconds)
        while True:
            # Woken every half second: a signal the kernel delivers to one of Ray's threads sets
            # no event until the main thread runs Python again (a bare wait() can sleep forever).
            while not stop_event.wait(0.5):
                pass
            if not reload_event.is_set():
                break
            stop_event.clear()
            reload_event.clear()
            _rolling_update(args, settings)
        print("stopping...", flush=True)
    finally:
        drained = server.stop(settings)
    if not drained:  # (the log says why; Ray may already have ended this process with the same status)
        return 1
    print("stopped", flush=True)
    return 0


def _serve_standalone(source: SettingsSource, settings: ServerSettings) -> int:
    """No Ray: this process serves (one worker), or supervises ``settings.workers`` that do."""
    from serving.ports import check_port_free

    began = time.monotonic()
    try:
        warn_of_ray_resources(settings)
        check_port_free(settings.host, settings.http_port, "HTTP")
        check_port_free(settings.host, settings.grpc_port, "gRPC")
        check_port_free(settings.host, settings.metrics_port, "metrics")
        if settings.workers == 1:
            from serving.standalone.worker import Worker, serve

            serve(Worker(source), settings, lambda _: _print_ready(settings, time.monotonic() - began))
        else:
            _supervise(source, settings, began)
    except ConfigError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except ServingError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    print("stopped", flush=True)
    return 0


def warn_of_ray_resources(settings: ServerSettings) -> None:
    """Say which model.yaml resources standalone leaves to Ray mode (replica counts, GPU fractions).

    Raises:
        ConfigError: the repository or a model.yaml is invalid.
    """
    from serving.repository import scan_repository

    for entry in scan_repository(settings.repository):
        resources = entry.config.resources
        if resources.replicas > 1 or resources.num_gpus % 1:
            logging.getLogger("serving.standalone").warning(
                "%s asks for %d replicas and %g GPUs each: standalone runs %d process(es) on this machine's "
                "devices (--workers N); Ray mode places replicas and shares GPUs by fractions",
                entry.name,
                resources.replicas,
                resources.num_gpus,
                settings.workers,
            )


def _supervise(source: SettingsSource, settings: ServerSettings, began: float) -> None:
    from serving.standalone.supervisor import Supervisor

    stop, reload = threading.Event(), threading.Event()

    def on_reload(*_: object) -> None:
        reload.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, on_reload)
    Supervisor(source, settings).run(stop, reload, lambda: _print_ready(settings, time.monotonic() - began))
    print("stopping...", flush=True)


def _rolling_update(args: argparse.Namespace, running: ServerSettings) -> None:
    """SIGHUP: re-read the settings and the repository, then replace every replica, the new ones
    listening before the old ones drain. A change of address or ports needs a restart."""
    from serving.deploy import server

    print("SIGHUP: rolling update...", flush=True)
    try:
        settings = _load_serve_settings(args)
        fixed = (
            "host",
            "http_port",
            "grpc_port",
            "metrics_port",
            "ray_address",
            "num_cpus",
            "ray_dashboard",
            "standalone",
        )
        changed = [name for name in fixed if getattr(settings, name) != getattr(running, name)]
        if changed:
            raise ConfigError(f"{', '.join(changed)} changed: restart the server to apply")
        began = time.monotonic()
        server.deploy(settings)
    except (ConfigError, RuntimeError) as exc:
        message = exc.message if isinstance(exc, ConfigError) else str(exc)
        print(f"rolling update failed, still serving: {message}", file=sys.stderr, flush=True)
        return
    print(f"rolling update done in {time.monotonic() - began:.1f}s", flush=True)


def _replicas(args: argparse.Namespace) -> dict[str, int] | None:
    given = {"min": args.replicas, "max": args.max_replicas}
    chosen = {k: v for k, v in given.items() if v is not None}
    return chosen or None


def _aliases(repository: Path, state_dir: Path | None) -> dict[str, dict[str, int]]:
    """Every model's aliases in the serving state (for pipeline steps named MODEL@ALIAS)."""
    from serving.control.store import LifecycleStore

    state = LifecycleStore(state_dir or repository / "_serving").read()
    return {name: dict(routing.aliases) for name, routing in state.models.items() if routing.aliases}


def _score(args: argparse.Namespace) -> int:
    from serving.errors import ServingError
    from serving.offline.mapping import parse_mapping

    try:
        from serving.offline.job import JobFailedError, ScoreJob, run
        from serving.offline.lock import LOCK_HELD_EXIT, OutputLockedError

        job = ScoreJob(
            repository=args.repository,
            model=args.model,
            inputs=args.input,
            output=args.output,
            mapping=parse_mapping(args.map or []),
            passthrough=tuple(c for c in args.passthrough.split(",") if c) if args.passthrough is not None else None,
            batch_size=args.batch_size,
            concurrency=args.concurrency,
            num_cpus=args.num_cpus,
            num_gpus=args.num_gpus,
            threads=args.threads,
            max_error_rate=args.max_error_rate,
            rows_per_file=args.rows_per_file,
            overwrite=args.overwrite,
            address=args.address,
            executor=args.executor,
            local_max_rows=args.local_max_rows,
            verbose=args.verbose,
            progress=not args.quiet,
            incremental=args.incremental,
            aliases=_aliases(args.repository, args.state_dir),
        )
        result = run(job)
    except JobFailedError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except OutputLockedError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return LOCK_HELD_EXIT
    except ServingError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    print(result.summary(), flush=True)
    return 0


def _keys(args: argparse.Namespace) -> int:
    from serving import auth

    try:
        if args.keys_command == "create":
            models = tuple(m.strip() for m in args.models.split(",") if m.strip()) or ("*",)
            key = auth.create_key(args.file, args.name, models, args.admin)
            print(key)
            print(f"# key {args.name!r} added to {args.file}; store it now, it is not shown again", file=sys.stderr)
        elif args.keys_command == "revoke":
            auth.revoke_key(args.file, args.name)
            print(f"key {args.name!r} revoked", file=sys.stderr)
        else:
            for record in auth.read_keys(args.file).values():
                print(
                    f"{record.name}\tid {record.id}\tmodels {','.join(record.models)}\t{'admin' if record.admin else ''}"
                )
    except ConfigError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    return 0


def _runs(args: argparse.Namespace) -> int:
    from serving.offline.manifest import read_runs
    from serving.offline.plan import output_location

    try:
        fs, path = output_location(args.output)
    except ServingError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    runs = read_runs(fs, path)
    if not runs:
        print(f"error: no runs recorded in {args.output} (no {args.output}/_runs/)", file=sys.stderr)
        return 2
    print(f"{'started (UTC)':20s} {'run':8s} {'model':16s} {'mode':11s} {'files scored/kept':>17s} "
          f"{'rows scored':>12s} {'failed':>8s} {'total rows':>12s} {'seconds':>8s}")  # fmt: skip
    for r in runs:
        run, rows = r.get("run", {}), r["rows"]
        print(
            f"{r['started_at'][:19]:20s} {run.get('id', '-'):8s} {r['model']['name'] + ' v' + str(r['model']['version']):16s} "
            f"{'incremental' if run.get('incremental') else 'full':11s} "
            f"{str(run.get('files_scored', '-')) + '/' + str(run.get('files_kept', '-')):>17s} "
            f"{run.get('rows_scored', rows['scored']):>12,} {run.get('rows_failed', rows['failed']):>8,} "
            f"{rows['read']:>12,} {r['duration_s']:>8.1f}"
        )
    return 0


def _demo_repo(args: argparse.Namespace) -> int:
    from serving.demo import build_demo_dataset, build_demo_repository

    build_demo_repository(args.root, reference=args.reference)
    print(f"demo model repository written to {args.root}")
    if args.dataset is not None:
        build_demo_dataset(args.dataset)
        print(f"demo Parquet dataset (digits, hive partition split=) written to {args.dataset}")
    return 0


def _demo_data(args: argparse.Namespace) -> int:
    from serving.demo import build_demo_dataset, build_image_dataset

    if args.root is None and args.images is None:
        print("error: give a folder (the digits as pixels) or --images FILE (as PNG files), or both", file=sys.stderr)
        return 2
    if args.root is not None:
        build_demo_dataset(args.root)
        print(f"demo Parquet dataset (digits, hive partition split=) written to {args.root}")
    if args.images is not None:
        build_image_dataset(args.images)
        print(f"demo Parquet file (digits as PNG files: image_id, png, target) written to {args.images}")
    return 0


def _positive_int(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="serving", description="Open Inference Protocol model server on Ray Serve")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve a model repository over HTTP and gRPC")
    s.add_argument("--repository", type=Path, help="model repository root (default ./model_repository)")
    s.add_argument("--config", type=Path, help="server settings YAML (keys of ServerSettings)")
    s.add_argument("--host", help="address HTTP and gRPC bind (default 127.0.0.1)")
    s.add_argument("--http-port", type=int, help="HTTP port (default 8000)")
    s.add_argument("--grpc-port", type=int, help="gRPC port (default 8001)")
    s.add_argument("--metrics-port", type=int, help="Prometheus metrics port (default 8002)")
    s.add_argument("--address", help="join this Ray cluster instead of starting a local one (or RAY_ADDRESS)")
    s.add_argument("--replicas", type=_positive_int, help="replicas (the fewest, with --max-replicas); default 1")
    s.add_argument("--max-replicas", type=_positive_int, help="autoscale up to this many replicas from their load")
    s.add_argument(
        "--api-keys", type=Path, help="API keys file (serving keys create): every request but health needs a key"
    )
    s.add_argument(
        "--ray-dashboard",
        action="store_true",
        help="the local Ray with its dashboard (:8265) and autoscaler monitor (default: neither runs)",
    )
    s.add_argument(
        "--standalone",
        action="store_true",
        help="serve without Ray: one process (no autoscaling, cluster or GPU fractions: those need Ray mode)",
    )
    s.add_argument("--workers", type=_positive_int, help="standalone: N processes sharing the ports (default 1)")
    s.add_argument(
        "--prediction-log",
        metavar="FOLDER_OR_URI",
        help="log every model's requests here as Parquet (model.yaml log: tunes or turns it off per model)",
    )
    s.add_argument("--insecure", action="store_true", help="allow a non-loopback --host without --api-keys")
    s.add_argument("--verbose", action="store_true", help="Ray's and Serve's own INFO logs on the console too")
    s.add_argument("--tls-cert", type=Path, help="TLS certificate chain (PEM) for the HTTP and gRPC ports")
    s.add_argument("--tls-key", type=Path, help="the certificate's private key (PEM)")
    s.add_argument("--tls-client-ca", type=Path, help="require client certificates signed by this CA (mutual TLS)")
    s.set_defaults(func=_serve)
    sc = sub.add_parser("score", help="score Parquet files with a model (in-process or a Ray Data job)")
    sc.add_argument("--model", required=True, help="NAME or NAME:VERSION (default: newest served version)")
    sc.add_argument("--input", required=True, action="append", help="Parquet file, folder, glob or URI (repeatable)")
    sc.add_argument(
        "--output",
        required=True,
        help="output folder (must not exist unless --overwrite or --incremental); {date}, {model} and {version} "
        "are filled in (e.g. lake/scored/ds={date})",
    )
    sc.add_argument("--repository", type=Path, default=Path("model_repository"), help="model repository root")
    sc.add_argument(
        "--map",
        action="append",
        metavar="INPUT=COL[,COL...]",
        help="model input from one list column, or from scalar columns stacked in order (repeatable)",
    )
    sc.add_argument(
        "--passthrough", metavar="COL[,COL...]", help="columns copied to the output (replaces model.yaml's)"
    )
    sc.add_argument(
        "--batch-size", type=_positive_int, default=16384, help="rows per model call (capped by max_batch_size)"
    )
    sc.add_argument("--concurrency", type=_positive_int, help="model actors (default: CPUs / --num-cpus, or GPUs)")
    sc.add_argument("--num-cpus", type=float, default=1.0, help="CPUs reserved per model actor")
    sc.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per model actor (fractions share a GPU)")
    sc.add_argument("--threads", type=int, help="runtime threads per actor (default: model.yaml instance.num_threads)")
    sc.add_argument(
        "--max-error-rate", type=float, default=0.0, help="fail when more than this fraction of rows fail (default 0)"
    )
    sc.add_argument(
        "--rows-per-file",
        type=_positive_int,
        default=1_000_000,
        help="rows per work unit and output file (input row groups are not split)",
    )
    sc.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    sc.add_argument(
        "--state-dir",
        type=Path,
        help="the server's state folder, for pipeline steps named MODEL@ALIAS (default <repository>/_serving)",
    )
    sc.add_argument(
        "--incremental",
        action="store_true",
        help="score only input files that no earlier run of this model version scored into this output "
        "(new or changed); unchanged files keep their outputs, files gone from the input lose them",
    )
    sc.add_argument("--address", help="run on this Ray cluster (or RAY_ADDRESS) instead of a local one")
    sc.add_argument(
        "--executor",
        choices=("auto", "local", "ray"),
        default="auto",
        help="auto (default): in this process when no cluster is named and the input has at most "
        "--local-max-rows rows, else Ray Data; local; ray (a local Ray, or --address)",
    )
    sc.add_argument(
        "--local-max-rows", type=_positive_int, default=2_000_000, help="auto's in-process limit (default 2,000,000)"
    )
    sc.add_argument("--verbose", action="store_true", help="Ray's and Ray Data's own logs and progress bars")
    sc.add_argument("--quiet", action="store_true", help="no progress output")
    sc.set_defaults(func=_score)
    k = sub.add_parser("keys", help="create, list and revoke API keys (a file `serving serve --api-keys` reads)")
    ksub = k.add_subparsers(dest="keys_command", required=True)
    kc = ksub.add_parser("create", help="add a key and print it (the only time it is shown)")
    kc.add_argument("name")
    kc.add_argument("--models", default="*", help="comma-separated models the key may use, or * (default)")
    kc.add_argument("--admin", action="store_true", help="an admin key (lifecycle and repository operations)")
    kc.add_argument("--file", type=Path, required=True, help="the keys file (created 0600 if absent)")
    kl = ksub.add_parser("list", help="names, ids, models and admin flags (never the keys)")
    kl.add_argument("--file", type=Path, required=True)
    kr = ksub.add_parser("revoke", help="remove a key (a running server stops accepting it within a second)")
    kr.add_argument("name")
    kr.add_argument("--file", type=Path, required=True)
    k.set_defaults(func=_keys)
    r = sub.add_parser("runs", help="list the runs recorded in a `serving score` output (its _runs/ history)")
    r.add_argument("output", help="the output folder")
    r.set_defaults(func=_runs)
    d = sub.add_parser("demo-repo", help="build the demo model repository")
    d.add_argument("root", type=Path)
    d.add_argument("--reference", action="store_true", help="also build the benchmark's reference MLP")
    d.add_argument("--dataset", type=Path, help="also write the digits as a Parquet dataset here (for `score`)")
    d.set_defaults(func=_demo_repo)
    dd = sub.add_parser("demo-data", help="write the demo digits as a Parquet dataset (for score, evaluate, profile)")
    dd.add_argument("root", type=Path, nargs="?", help="folder for the digits as pixels (hive partition split=)")
    dd.add_argument("--images", type=Path, help="also (or only) write the digits as PNG files in one Parquet file here")
    dd.set_defaults(func=_demo_data)
    cli_lifecycle.add_commands(sub)
    args = parser.parse_args(argv)
    quiet_logs = args.command in LIFECYCLE_COMMANDS or (args.command == "score" and not args.verbose)
    logging.basicConfig(
        level=logging.WARNING if quiet_logs else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if getattr(args, "address", None) is None and args.command == "serve" and not args.standalone:
        import os

        args.address = os.environ.get("RAY_ADDRESS") or None
    if args.command in LIFECYCLE_COMMANDS:
        sys.exit(cli_lifecycle.run(args.func, args))
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
