"""Standalone vs Ray mode: the same data plane, so the same throughput (`make bench-modes`, also run
by `make bench`). On the reference MLP, perf_analyzer sends batch-1 requests over gRPC (sync and
--async) and HTTP at each concurrency to `serving serve` and to `serving serve --standalone`,
the two servers measured in turn, twice (A B A B: a VM whose speed drifts within the run moves
both alike), and the better of each mode's two rounds is kept. Prints standalone / Ray mode per
row; writes bench/results/modes.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from online import FEATURES, MODEL, input_data, perf_analyzer  # noqa: E402

from serving.demo import build_reference_mlp  # noqa: E402

from server_process import ServerProcess, mode_args  # noqa: E402

PROTOCOLS = (("grpc", "grpc", ()), ("grpc-async", "grpc", ("--async",)), ("http", "http", ()))


def measure(server: ServerProcess, data: Path, concurrency: list[int]) -> dict[tuple[str, int], float]:
    out = {}
    for label, wire, extra in PROTOCOLS:
        url = server.grpc_url if wire == "grpc" else server.http_url
        for c in concurrency:
            out[(label, c)] = perf_analyzer(url, wire, MODEL, "1", c, data, extra=extra)["infer_s"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    subprocess.run(["bash", str(HERE / "perf_tools.sh")], check=True)
    work = Path(tempfile.mkdtemp(prefix="serving-modes-"))
    repo = work / "repo"
    build_reference_mlp(repo)
    data = input_data(work / "input.json", FEATURES)
    best: dict[str, dict[tuple[str, int], float]] = {"ray": {}, "standalone": {}}
    rounds: dict[str, list[dict[tuple[str, int], float]]] = {"ray": [], "standalone": []}
    for round_ in range(args.rounds):
        for mode in ("ray", "standalone"):
            server = ServerProcess(repo, work / f"{mode}-{round_}.log", args=mode_args(mode))
            server.start()
            try:
                rates = measure(server, data, args.concurrency)
            finally:
                server.stop()
            rounds[mode].append(rates)
            for key, rate in rates.items():
                best[mode][key] = max(best[mode].get(key, 0.0), rate)
            print(
                f"[round {round_ + 1} {mode:10s}] " + "  ".join(f"{k[0]} c={k[1]} {v:,.0f}" for k, v in rates.items())
            )
    lines = [
        "| protocol | concurrency | Ray mode infer/s | standalone infer/s | standalone / Ray mode |",
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
    noise = sorted(
        max(r[key] for r in rounds[mode]) / min(r[key] for r in rounds[mode]) - 1
        for mode in rounds
        for key in rounds[mode][0]
    )
    if args.rounds > 1:
        summary += (
            f"\n\nThe noise floor: the same server, round to round, differs by a median {noise[len(noise) // 2]:.1%} "
            f"per row (up to {noise[-1]:.1%})."
        )
    text = "\n".join(lines) + "\n\n" + summary
    print("\n" + text)
    (HERE / "results" / "modes.md").write_text(
        f"# Standalone vs Ray mode ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs)\n\n"
        "Reference MLP 784->1024->1024->10 FP32, perf_analyzer batch-1 requests (gRPC sync and --async, HTTP "
        f"binary); each mode measured {args.rounds} times in turn (A B A B), the better round kept.\n\n{text}\n"
    )


if __name__ == "__main__":
    main()
