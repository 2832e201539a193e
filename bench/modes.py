"""Standalone vs Ray mode: the same data plane, so the same throughput (`make bench-modes`, also run
by `make bench`). On the reference MLP, perf_analyzer sends batch-1 requests over gRPC (sync and
--async) and HTTP at each concurrency to `serving serve` and `serving serve --standalone`, both
running. Each row is measured on the two servers back to back, in the order A B then B A on the
next round, so a VM whose speed drifts within minutes (2x and more on the 2-core VMs) moves both
alike; the ratio per row is the sum of standalone's rounds over the sum of Ray mode's. Writes
bench/results/modes.md, with the noise: the same server, round to round.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from online import FEATURES, MODEL, perf_analyzer, reference_setup  # noqa: E402
from paired import compare, infer_request  # noqa: E402

from server_process import ServerProcess, mode_args  # noqa: E402

PROTOCOLS = (("grpc", "grpc", ()), ("grpc-async", "grpc", ("--async",)), ("http", "http", ()))


def one(server: ServerProcess, label: str, concurrency: int, data: Path) -> float:
    wire, extra = next((w, e) for name, w, e in PROTOCOLS if name == label)
    url = server.grpc_url if wire == "grpc" else server.http_url
    return perf_analyzer(url, wire, MODEL, "1", concurrency, data, extra=extra)["infer_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--rounds", type=int, default=2, help="perf_analyzer rounds (0: only the paired windows)")
    parser.add_argument("--pairs", type=int, default=40, help="paired 1 s gRPC windows, standalone vs Ray mode")
    args = parser.parse_args()
    subprocess.run(["bash", str(HERE / "perf_tools.sh")], check=True)
    work, repo, data = reference_setup("serving-modes-")
    servers = {
        mode: ServerProcess(repo, work / f"{mode}.log", args=mode_args(mode), metrics_every_second=False)
        for mode in ("ray", "standalone")
    }
    rows = [(label, c) for label, _, _ in PROTOCOLS for c in args.concurrency]
    rates: dict[str, dict[tuple[str, int], list[float]]] = {mode: {row: [] for row in rows} for mode in servers}
    try:
        for server in servers.values():
            server.start()
        for round_ in range(args.rounds):
            order = ["ray", "standalone"] if round_ % 2 == 0 else ["standalone", "ray"]
            for row in rows:
                for mode in order:
                    rates[mode][row].append(one(servers[mode], row[0], row[1], data))
                print(
                    f"[round {round_ + 1}] {row[0]:10s} c={row[1]:<3d} Ray mode {rates['ray'][row][-1]:7,.0f}  "
                    f"standalone {rates['standalone'][row][-1]:7,.0f} infer/s",
                    flush=True,
                )
        request = infer_request(MODEL, "input", FEATURES)
        urls = {mode: server.grpc_url for mode, server in servers.items()}
        paired = compare(urls, request, pairs=args.pairs)
        control = compare({"ray": urls["ray"], "ray again": urls["ray"]}, request, pairs=args.pairs)
    finally:
        for server in servers.values():
            server.stop()
    paired_text = (
        f"Paired 1 s windows (`bench/paired.py`: a grpc.aio client, 16 calls in flight, alternating A B / B A, "
        f"{args.pairs} pairs): standalone / Ray mode = **{paired.ratio:.3f}** (95 % interval {paired.low:.3f}-"
        f"{paired.high:.3f}); the same method on Ray mode against itself: {control.ratio:.3f} "
        f"({control.low:.3f}-{control.high:.3f}). Mean rates {np.mean(paired.rates['ray']):,.0f} (Ray mode) and "
        f"{np.mean(paired.rates['standalone']):,.0f} (standalone) calls/s."
    )
    print("\n" + paired_text, flush=True)
    if not args.rounds:
        (HERE / "results" / "modes_paired.md").write_text(
            f"# Standalone vs Ray mode, paired ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs)\n\n"
            f"Reference MLP 784->1024->1024->10 FP32, batch-1 requests.\n\n{paired_text}\n"
        )
        return
    best = {mode: {row: sum(v) / len(v) for row, v in by_row.items()} for mode, by_row in rates.items()}
    lines = [
        "| protocol | concurrency | Ray mode infer/s (mean) | standalone infer/s (mean) | standalone / Ray mode |",
        "|---|---|---|---|---|",
    ]
    ratios = []
    for label, _, _ in PROTOCOLS:
        for c in args.concurrency:
            r, s = best["ray"][(label, c)], best["standalone"][(label, c)]
            ratios.append(s / r)
            lines.append(f"| {label} | {c} | {r:,.0f} | {s:,.0f} | {s / r:.3f} |")
    summary = (
        f"standalone / Ray mode over the {len(ratios)} rows: median {sorted(ratios)[len(ratios) // 2]:.3f}, "
        f"range {min(ratios):.3f}-{max(ratios):.3f} (target: within 5 %, 0.95-1.05)"
    )
    noise = sorted(max(v) / min(v) - 1 for by_row in rates.values() for v in by_row.values())
    if args.rounds > 1:
        summary += (
            f"\n\nThe noise: the same server, round to round, differs by a median {noise[len(noise) // 2]:.1%} "
            f"per row (up to {noise[-1]:.1%})."
        )
    text = "\n".join(lines) + "\n\n" + summary + "\n\n" + paired_text
    print("\n" + text)
    (HERE / "results" / "modes.md").write_text(
        f"# Standalone vs Ray mode ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs)\n\n"
        "Reference MLP 784->1024->1024->10 FP32, perf_analyzer batch-1 requests (gRPC sync and --async, HTTP "
        f"binary); both servers running, each row measured on the two back to back ({args.rounds} rounds, A B then "
        f"B A); the mean of the rounds.\n\n{text}\n"
    )


if __name__ == "__main__":
    main()
