"""Run the Locust scenarios headless, write a report folder, and judge the SLOs.

    python loadtests/run.py --host http://127.0.0.1:8000 --grpc-host 127.0.0.1:8001 \\
        --model digits --protocols http-json http-binary grpc --shape step \\
        --users 8 --duration 30 --out loadtest-report --slo-p99-ms 200 --slo-error-ratio 0.01

Writes OUT/locust_stats.csv, OUT/locust_stats_history.csv, OUT/locust_failures.csv,
OUT/report.html (Locust's), OUT/throughput.png, OUT/latency.png and OUT/summary.md.
Exits 1 when an SLO is missed (p99 latency, error ratio, minimum throughput; per protocol),
so a CI stage can gate a rollout on it. SLOs can also come from a YAML file (--slo-file)
with keys p99_ms, error_ratio (default 0.01), min_rps.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import yaml

HERE = Path(__file__).resolve().parent
USERS = {"http-json": "HttpJsonUser", "http-binary": "HttpBinaryUser", "grpc": "GrpcUser"}
NAMES = {"http-json": "http-json infer", "http-binary": "http-binary infer", "grpc": "grpc infer"}


@dataclass
class Result:
    protocol: str
    requests: int
    failures: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float

    @property
    def error_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 1.0


def run_locust(args: argparse.Namespace) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "locust", "-f", str(HERE / "locustfile.py"), "--headless",
        "--host", args.host, "--grpc-host", args.grpc_host, "--model", args.model,
        "--model-version", args.model_version, "--shape", args.shape,
        "--peak-users", str(args.users), "--duration-s", str(args.duration),
        "--max-requests", str(args.max_requests),
        "--csv", str(args.out / "locust"), "--csv-full-history", "--html", str(args.out / "report.html"),
        "--stop-timeout", "5", "--only-summary", "--exit-code-on-error", "0",
        *[USERS[p] for p in args.protocols],
    ]  # fmt: skip
    with (args.out / "locust.log").open("wb") as log:
        return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=args.duration + 120).returncode


def read_results(out: Path, protocols: list[str]) -> list[Result]:
    rows = {r["Name"]: r for r in csv.DictReader((out / "locust_stats.csv").open())}
    results = []
    for p in protocols:
        r = rows.get(NAMES[p])
        if r is None:
            results.append(Result(p, 0, 0, 0.0, 0.0, 0.0, 0.0))
            continue
        results.append(
            Result(
                p,
                int(r["Request Count"]),
                int(r["Failure Count"]),
                float(r["Requests/s"]),
                float(r["50%"]),
                float(r["95%"]),
                float(r["99%"]),
            )
        )
    return results


def plot(out: Path, protocols: list[str]) -> None:
    history: dict[str, list[dict[str, str]]] = {}
    for row in csv.DictReader((out / "locust_stats_history.csv").open()):
        history.setdefault(row["Name"], []).append(row)
    fig, ax = plt.subplots(figsize=(8, 4))
    for p in protocols:
        rows = history.get(NAMES[p], [])
        t0 = int(rows[0]["Timestamp"]) if rows else 0
        ax.plot([int(r["Timestamp"]) - t0 for r in rows], [float(r["Requests/s"]) for r in rows], label=p)
    ax.set(xlabel="seconds", ylabel="requests/s", title="Throughput")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "throughput.png")
    plt.close(fig)
    fig, axes = plt.subplots(len(protocols), 1, figsize=(8, 3 * len(protocols)), squeeze=False)
    for ax, p in zip(axes[:, 0], protocols):
        rows = [r for r in history.get(NAMES[p], []) if r["50%"] not in ("N/A", "")]
        t0 = int(rows[0]["Timestamp"]) if rows else 0
        for q in ("50%", "95%", "99%"):
            ax.plot([int(r["Timestamp"]) - t0 for r in rows], [float(r[q]) for r in rows], label=f"p{q[:-1]}")
        ax.set(xlabel="seconds", ylabel="ms", title=f"Latency, {p}")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "latency.png")
    plt.close(fig)


def verdict(results: list[Result], slo: dict[str, float]) -> list[str]:
    misses = []
    for r in results:
        if r.requests == 0:
            misses.append(f"{r.protocol}: no requests completed")
        if "p99_ms" in slo and r.p99_ms > slo["p99_ms"]:
            misses.append(f"{r.protocol}: p99 {r.p99_ms:.1f} ms > {slo['p99_ms']} ms")
        if "error_ratio" in slo and r.error_ratio > slo["error_ratio"]:
            misses.append(f"{r.protocol}: error ratio {r.error_ratio:.4f} > {slo['error_ratio']}")
        if "min_rps" in slo and r.rps < slo["min_rps"]:
            misses.append(f"{r.protocol}: {r.rps:.1f} req/s < {slo['min_rps']} req/s")
    return misses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=os.environ.get("LOADTEST_HOST", "http://127.0.0.1:8000"))
    parser.add_argument("--grpc-host", default=os.environ.get("LOADTEST_GRPC_HOST", "127.0.0.1:8001"))
    parser.add_argument("--model", default="digits")
    parser.add_argument("--model-version", default="")
    parser.add_argument("--protocols", nargs="+", default=list(USERS), choices=list(USERS))
    parser.add_argument("--shape", default="constant", choices=["constant", "step", "spike"])
    parser.add_argument("--users", type=int, default=8, help="peak concurrent users")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds")
    parser.add_argument("--max-requests", type=int, default=100_000, help="stop after this many requests")
    parser.add_argument("--out", type=Path, default=Path("loadtest-report"))
    parser.add_argument("--slo-file", type=Path)
    parser.add_argument("--slo-p99-ms", type=float)
    parser.add_argument("--slo-error-ratio", type=float)
    parser.add_argument("--slo-min-rps", type=float)
    args = parser.parse_args(argv)
    slo: dict[str, float] = {"error_ratio": 0.01}  # a run where most requests fail is never a pass
    if args.slo_file:
        slo.update({k: float(v) for k, v in (yaml.safe_load(args.slo_file.read_text()) or {}).items()})
    for key, value in (
        ("p99_ms", args.slo_p99_ms),
        ("error_ratio", args.slo_error_ratio),
        ("min_rps", args.slo_min_rps),
    ):
        if value is not None:
            slo[key] = value
    code = run_locust(args)
    if code != 0 or not (args.out / "locust_stats.csv").exists():
        print(f"locust failed ({code}); see {args.out / 'locust.log'}", file=sys.stderr)
        return 2
    results = read_results(args.out, args.protocols)
    plot(args.out, args.protocols)
    misses = verdict(results, slo)
    lines = [
        f"# Load test: {args.model} at {args.host} / {args.grpc_host}",
        "",
        f"shape {args.shape}, peak {args.users} users, {args.duration:.0f} s, at most {args.max_requests} requests",
        "",
        "| protocol | requests | failures | error ratio | req/s | p50 ms | p95 ms | p99 ms |",
        "|---|---|---|---|---|---|---|---|",
        *[
            f"| {r.protocol} | {r.requests} | {r.failures} | {r.error_ratio:.4f} | {r.rps:.1f} | {r.p50_ms:.0f} | "
            f"{r.p95_ms:.0f} | {r.p99_ms:.0f} |"
            for r in results
        ],
        "",
        f"SLO {slo or '(none)'}: " + ("PASS" if not misses else "FAIL: " + "; ".join(misses)),
        "",
        "![throughput](throughput.png)",
        "![latency](latency.png)",
    ]
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:-3]))
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
