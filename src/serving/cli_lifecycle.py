"""The lifecycle commands of ``serving``: against a running server (``models``, ``promote``,
``rollback``, ``traffic``, ``shadow``, ``load``, ``unload``, ``audit``) and on the repository
on disk (``lineage``, ``evaluate``, ``profile``)."""

from __future__ import annotations

import argparse
import json
import socket
import sys
from pathlib import Path
from typing import Any

from serving.admin_client import AdminClient, AdminClientError
from serving.errors import InvalidInputError, ServingError
from serving.identity import current_user
from serving.lifecycle.lineage import EvaluationRecord


def _client(args: argparse.Namespace) -> AdminClient:
    return AdminClient(args.server, args.api_key, args.ca_cert)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def _models(args: argparse.Namespace) -> int:
    doc = _client(args).call("GET", "/v2/admin/models")
    if args.json:
        print(json.dumps(doc, indent=1))
        return 0
    for model in doc["models"]:
        split = ", ".join(f"v{v}={w}%" for v, w in sorted(model["weights"].items())) or "newest ready"
        sticky = f" (sticky by {model['sticky_header']})" if model["sticky_header"] else ""
        shadow = f"; shadow v{model['shadow']}" if model["shadow"] is not None else ""
        print(f"{model['name']}: traffic {split}{sticky}{shadow}")
        for v in model["versions"]:
            lineage = v["lineage"] or {}
            facts = []
            if "artifact" in lineage:
                facts.append(f"sha256 {lineage['artifact']['sha256'][:12]}")
            if "training_data" in lineage:
                facts.append(f"data {lineage['training_data']['fingerprint'][:12]}")
            if lineage.get("code_revision"):
                facts.append(f"code {lineage['code_revision']}")
            if "evaluation" in lineage:
                facts.append(", ".join(f"{k} {x:.4g}" for k, x in sorted(lineage["evaluation"]["metrics"].items())))
            if v.get("worst_slice"):
                facts.append(f"worst slice {v['worst_slice']}")
            if "live_evaluation" in lineage:
                live = lineage["live_evaluation"]
                facts.append(
                    f"live accuracy {live['metrics']['accuracy']:.4g}"
                    if "accuracy" in live["metrics"]
                    else "live evaluation"
                )
            if "profile" in lineage:
                facts.append(f"profile of {len(lineage['profile']['features'])} features")
            aliases = f" [{', '.join(v['aliases'])}]" if v["aliases"] else ""
            reason = f" ({v['reason']})" if v["reason"] else ""
            print(f"  v{v['version']} {v['state']}{reason}{aliases}" + (f"  {'; '.join(facts)}" if facts else ""))
    return 0


def _show(doc: Any) -> int:
    print(json.dumps(doc, indent=1))
    return 0


def _promote(args: argparse.Namespace) -> int:
    body = {"version": args.version, "alias": args.alias, "force": args.force}
    doc = _client(args).call("POST", f"/v2/admin/models/{args.model}/promote", body)
    forced = f" (FORCED past: {'; '.join(doc['gates_missed'])})" if doc.get("gates_missed") else ""
    was = doc["before"]["aliases"].get(args.alias)
    print(f"{args.model}: {args.alias} -> v{args.version} ({'was v' + str(was) if was else 'new alias'}){forced}")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    doc = _client(args).call("POST", f"/v2/admin/models/{args.model}/rollback", {"alias": args.alias})
    before, after = doc["before"]["aliases"][args.alias], doc["after"]["aliases"][args.alias]
    print(f"{args.model}: {args.alias} -> v{after} (was v{before})")
    return 0


def _traffic(args: argparse.Namespace) -> int:
    weights: dict[str, int] = {}
    for item in args.weights:
        version, sep, weight = item.partition("=")
        if not sep or not version.isdigit() or not weight.lstrip("-").isdigit():
            return _fail(f"weights are VERSION=PERCENT, got {item!r}")
        weights[version] = int(weight)
    body: dict[str, Any] = {"weights": weights}
    if args.sticky_header:
        body["sticky_header"] = args.sticky_header
    _client(args).call("POST", f"/v2/admin/models/{args.model}/traffic", body)
    split = ", ".join(f"v{v}={w}%" for v, w in weights.items()) or "newest ready version"
    print(f"{args.model}: traffic {split}" + (f" (sticky by {args.sticky_header})" if args.sticky_header else ""))
    return 0


def _shadow(args: argparse.Namespace) -> int:
    version = None if args.version == "off" else args.version
    if version is not None and not version.isdigit():
        return _fail("shadow takes a version number or 'off'")
    _client(args).call("POST", f"/v2/admin/models/{args.model}/shadow", {"version": version and int(version)})
    print(f"{args.model}: shadow {'off' if version is None else 'v' + version}")
    return 0


def _load(args: argparse.Namespace) -> int:
    body = {"parameters": {"version": args.version}} if args.version else {}
    doc = _client(args).call("POST", f"/v2/repository/models/{args.model}/{args.command}", body, timeout_s=600)
    print(load_summary(args.model, args.command, doc))
    return 0


def load_summary(model: str, command: str, report: dict[str, Any]) -> str:
    """One line for what a load or unload did (the server's LoadReport)."""

    def versions(key: str) -> str:
        return ", ".join(f"v{v}" for v in report.get(key, ()))

    parts = [f"{key} {versions(key)}" for key in ("loaded", "unloaded") if report.get(key)]
    if report.get("kept"):
        parts.append(f"kept {versions('kept')} (routing still points at them)")
    parts += [f"v{v} failed: {why}" for v, why in report.get("failed", ())]
    return f"{model}: " + ("; ".join(parts) if parts else f"nothing to {command}")


def _audit(args: argparse.Namespace) -> int:
    for entry in _client(args).call("GET", f"/v2/admin/audit?limit={args.limit}")["entries"]:
        print(json.dumps(entry, separators=(",", ":")))
    return 0


def _lineage(args: argparse.Namespace) -> int:
    from serving.control.tools import record_lineage

    params = dict(p.partition("=")[::2] for p in args.param)
    path = record_lineage(
        args.repository,
        args.version,
        training_data=args.training_data,
        code_revision=args.code_revision,
        created_by=args.created_by,
        params=params,
    )
    print(path.read_text(encoding="utf-8"), end="")
    _audit_tool(args, "lineage", {"training_data": args.training_data, "code_revision": args.code_revision})
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from serving.control.tools import evaluate

    if args.from_log:
        return _evaluate_live(args)
    if not args.data or not args.label:
        return _fail("evaluate needs --data and --label (labelled data), or --from-log LOG (live traffic)")
    slice_by = [tuple(c.strip() for c in spec.split(",") if c.strip()) for spec in args.slice_by or ()]
    record = evaluate(
        args.repository,
        args.version,
        args.data,
        args.label,
        task=args.task,
        executor=args.executor,
        slice_by=slice_by,
        sensitive=args.sensitive,
    )
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in sorted(record.metrics.items()))
    print(f"{args.version} on {record.data.rows:,} rows ({record.task}): {metrics}")
    for line in evaluation_details(record, args.repository, args.version):
        print(line)
    print(f"stored in {args.repository / args.version.replace(':', '/')}/lineage.yaml")
    _audit_tool(args, "evaluate", {"metrics": record.metrics, "data": record.data.fingerprint, "label": record.label})
    return 0


def evaluation_details(record: EvaluationRecord, repository: Path, spec: str) -> list[str]:
    """The slices (metrics with their 95 % intervals; which are too small to gate) and the fairness."""
    from serving.repository import load_model_entry

    lines = []
    try:
        min_rows = load_model_entry(repository / spec.partition(":")[0]).config.gates.min_slice_rows
    except ServingError:
        min_rows = 0
    for s in record.slices:
        shown = ", ".join(
            f"{k} {v:.4f} [{s.low[k]:.4f}, {s.high[k]:.4f}]" for k, v in sorted(s.metrics.items()) if k in s.low
        )
        small = f"  (under min_slice_rows {min_rows}: not gated)" if s.rows < min_rows else ""
        lines.append(f"  slice {s.slice} ({s.rows:,} rows): {shown}{small}")
    if record.fairness is not None:
        f = record.fairness
        numbers = ", ".join(f"{k} {v:.4f}" for k, v in sorted(f.metrics.items()))
        lines.append(f"  fairness across {f.sensitive} (positive class {f.positive!r}, groups {f.groups}): {numbers}")
    return lines


def _evaluate_live(args: argparse.Namespace) -> int:
    from serving.control.tools import evaluate_from_log

    since_s = parse_duration(args.since) if args.since else None
    r = evaluate_from_log(args.repository, args.version, args.from_log, since_s=since_s, task=args.task)
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in sorted(r.metrics.items()))
    print(
        f"{args.version} on {r.labelled:,} labelled of {r.predictions:,} logged answers "
        f"(coverage {r.coverage:.1%}, {r.first} .. {r.last}; {r.task}): {metrics}"
    )
    print(f"stored in {args.repository / args.version.replace(':', '/')}/lineage.yaml (live_evaluation)")
    _audit_tool(
        args,
        "evaluate --from-log",
        {"metrics": r.metrics, "log": r.log, "labelled": r.labelled, "coverage": r.coverage},
    )
    return 0


def parse_duration(text: str) -> float:
    """``90s``, ``30m``, ``24h``, ``7d`` (or plain seconds) in seconds.

    Raises:
        InvalidInputError: anything else.
    """
    units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
    try:
        value = float(number)
    except ValueError:
        raise InvalidInputError(f"--since {text!r}: expected a duration like 90s, 30m, 24h or 7d") from None
    if not value > 0 or value == float("inf"):
        raise InvalidInputError(f"--since {text!r}: must be a positive duration")
    return value * units[unit]


def _feedback(args: argparse.Namespace) -> int:
    import pyarrow.parquet as pq

    table = pq.read_table(args.labels)
    missing = [c for c in (args.id_column, args.label_column) if c not in table.column_names]
    if missing:
        return _fail(
            f"{args.labels}: no column {missing} (columns: {table.column_names}); see --id-column/--label-column"
        )
    ids = table.column(args.id_column).to_pylist()
    labels = table.column(args.label_column).to_pylist()
    rows = table.column("row").to_pylist() if "row" in table.column_names else [0] * len(ids)
    client = _client(args)
    totals = {"received": 0, "matched": 0, "unmatched": 0}
    for start in range(0, len(ids), FEEDBACK_CHUNK):
        end = start + FEEDBACK_CHUNK
        body = [
            {"id": str(i), "label": v, "row": int(r)}
            for i, v, r in zip(ids[start:end], labels[start:end], rows[start:end])
        ]
        done = client.call("POST", f"/v2/models/{args.model}/feedback", body)
        for key in totals:
            totals[key] += int(done[key])
    print(
        f"{args.model}: {totals['received']:,} labels kept; {totals['matched']:,} matched a logged prediction, "
        f"{totals['unmatched']:,} not (yet: a prediction another replica has not written matches later)"
    )
    return 0


FEEDBACK_CHUNK = 10_000


def _convert(args: argparse.Namespace) -> int:
    from serving.control.convert import convert

    done = convert(args.repository, args.version, args.data, tolerance=args.tolerance)
    r = done.record
    print(
        f"{args.version} -> version {done.version} (ONNX, {r.tool}): same labels and largest difference "
        f"{r.max_abs_diff:.3g} <= {r.tolerance:g} on {r.data.rows:,} rows; written to {done.path}"
    )
    _audit_tool(args, "convert", {"version": done.version, "max_abs_diff": r.max_abs_diff, "data": r.data.fingerprint})
    return 0


def _profile(args: argparse.Namespace) -> int:
    from serving.control.tools import profile_version

    record = profile_version(args.repository, args.version, args.data)
    print(
        f"{args.version}: profile of {len(record.features)} features of input {record.input!r} "
        f"from {record.data.rows:,} rows; the server watches drift from the next load of this version"
    )
    return 0


def _audit_tool(args: argparse.Namespace, action: str, details: dict[str, Any]) -> None:
    """Tools that change a version's lineage leave a line in the server's audit log too."""
    from serving.control.store import LifecycleStore

    model, _, version = args.version.partition(":")
    store = LifecycleStore(args.state_dir or args.repository / "_serving")
    store.record(
        model,
        who=f"{current_user()}@{socket.gethostname()} (serving {action})",
        action=action,
        details={"version": int(version), **details},
    )


def run(func: Any, args: argparse.Namespace) -> int:
    try:
        return int(func(args))
    except AdminClientError as exc:
        return _fail(str(exc))
    except ServingError as exc:
        return _fail(exc.message)


def add_commands(sub: Any) -> None:
    def server_parser(name: str, help: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help)
        p.add_argument("--server", help="the server's HTTP URL (default $SERVING_SERVER or http://127.0.0.1:8000)")
        p.add_argument("--api-key", help="an admin API key (default $SERVING_API_KEY)")
        p.add_argument("--ca-cert", help="CA certificate that signed the server's TLS certificate")
        return p

    p = server_parser("models", "versions, states, aliases, traffic, shadow and lineage of a running server")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_models)
    p = server_parser("promote", "point an alias at a version (checked against the model's release gates)")
    p.add_argument("model")
    p.add_argument("version", type=int)
    p.add_argument("--alias", required=True)
    p.add_argument("--force", action="store_true", help="promote past missed gates (the audit log says so)")
    p.set_defaults(func=_promote)
    p = server_parser("rollback", "point an alias back at its previous version")
    p.add_argument("model")
    p.add_argument("--alias", required=True)
    p.set_defaults(func=_rollback)
    p = server_parser("traffic", "split requests that name no version: serving traffic MODEL 1=90 2=10 (none: newest)")
    p.add_argument("model")
    p.add_argument("weights", nargs="*", help="VERSION=PERCENT, adding up to 100")
    p.add_argument("--sticky-header", help="same value of this request header -> same version")
    p.set_defaults(func=_traffic)
    p = server_parser("shadow", "send a copy of live requests to a version (answers compared, dropped), or 'off'")
    p.add_argument("model")
    p.add_argument("version")
    p.set_defaults(func=_shadow)
    for name, help in (
        ("load", "load (or reload) a model's versions from its folder"),
        ("unload", "unload a version or a model"),
    ):
        p = server_parser(name, help)
        p.add_argument("model")
        p.add_argument("version", nargs="?", type=int)
        p.set_defaults(func=_load)
    p = server_parser("feedback", "send labels for logged predictions (Parquet with id and label columns)")
    p.add_argument("model")
    p.add_argument("--labels", required=True, type=Path, help="Parquet file: id, label (and row) columns")
    p.add_argument("--id-column", default="id", help="the column holding request ids (default id)")
    p.add_argument("--label-column", default="label", help="the column holding labels (default label)")
    p.set_defaults(func=_feedback)
    p = server_parser("audit", "the last changes: time, who, what, before, after (JSON lines)")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=_audit)

    def repo_parser(name: str, help: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help)
        p.add_argument("version", metavar="MODEL:VERSION")
        p.add_argument("--repository", type=Path, default=Path("model_repository"), help="model repository root")
        p.add_argument(
            "--state-dir",
            type=Path,
            help="the server's state folder, for the audit log (default <repository>/_serving)",
        )
        return p

    p = repo_parser("lineage", "record a version's artifact sha256, training data fingerprint, code revision...")
    p.add_argument("--training-data", action="append", help="Parquet file/folder/glob it was trained on (repeatable)")
    p.add_argument("--code-revision", help="e.g. the training code's git commit")
    p.add_argument("--created-by")
    p.add_argument("--param", action="append", default=[], help="KEY=VALUE (repeatable)")
    p.set_defaults(func=_lineage)
    p = repo_parser("evaluate", "score labelled data through the batch path and store the metrics in the lineage")
    p.add_argument("--data", action="append", help="Parquet file/folder/glob (repeatable)")
    p.add_argument("--label", help="the column holding the true value")
    p.add_argument(
        "--from-log", metavar="LOG", help="instead: the version's logged live answers joined with their feedback labels"
    )
    p.add_argument("--since", help="with --from-log: only predictions this recent (90s, 30m, 24h, 7d)")
    p.add_argument(
        "--slice-by",
        action="append",
        metavar="COL[,COL]",
        help="metrics per slice too (columns crossed; repeatable), with bootstrap 95%% intervals",
    )
    p.add_argument(
        "--sensitive", metavar="COL", help="demographic parity and equalized odds across this column's groups"
    )
    p.add_argument("--task", choices=("classification", "regression"), help="default: regression for a float label")
    p.add_argument("--executor", choices=("auto", "local", "ray"), default="auto")
    p.set_defaults(func=_evaluate)
    p = repo_parser("convert", "write a tabular version as ONNX, as the next version, if it answers alike on --data")
    p.add_argument("--data", action="append", required=True, help="Parquet file/folder/glob to check on (repeatable)")
    p.add_argument("--tolerance", type=float, default=1e-5, help="largest difference allowed in probabilities")
    p.set_defaults(func=_convert)
    p = repo_parser("profile", "store the training distribution of the inputs (the server watches drift against it)")
    p.add_argument("--data", action="append", required=True, help="Parquet file/folder/glob (repeatable)")
    p.set_defaults(func=_profile)
