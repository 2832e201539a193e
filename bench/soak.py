"""Soak (`make soak`, not part of `make test`): a real server on the demo repository under bounded
HTTP and gRPC load for --minutes, with churn every minute: by default a version of digits
loaded then unloaded in turn (Triton's repository API; the load's answers move to it and back),
or with ``--churn rollout`` a rolling update (SIGHUP: every replica replaced); ``--churn none
--no-load`` is the control (the same server, idle). Every 5 s it samples the resident memory and
open file descriptors of every process the server started, by role. Writes bench/results/<out>.md,
<out>.csv (every sample) and a plot, <out>.png (``--out``, default ``soak``).
Flat means: the last minute's median within 10 % of the second minute's, per role and in all; runs
of 20 minutes or more also compare the last minute with minute 10 (after Ray's own warm-up)."""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import psutil
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from serving.demo import build_demo_repository  # noqa: E402

from server_process import ServerProcess  # noqa: E402

ROLES = (
    ("ServeReplica", "replica"),
    ("ServeController", "controller"),
    ("raylet", "raylet"),
    ("gcs_server", "gcs"),
    ("serving serve", "driver"),
    ("serving.cli", "driver"),
)


def role(p: psutil.Process) -> str:
    try:
        line = " ".join(p.cmdline())
    except psutil.Error:
        return "gone"
    for needle, name in ROLES:
        if needle in line:
            return name
    return "other ray"


def sample(server: ServerProcess) -> dict[str, tuple[float, int]]:
    """role -> (RSS MiB, open fds), summed over its processes."""
    assert server.proc is not None
    out: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for p in [psutil.Process(server.proc.pid), *server.descendants()]:
        try:
            r = role(p)
            out[r][0] += p.memory_info().rss / 2**20
            out[r][1] += p.num_fds()
        except psutil.Error:
            continue
    return {k: (v[0], int(v[1])) for k, v in out.items()}


class BoundedLoad:
    """HTTP and gRPC clients, each pausing 5 ms between requests; every outcome counted."""

    def __init__(self, server: ServerProcess) -> None:
        self.outcomes: Counter[str] = Counter()
        self._stop = threading.Event()
        x = np.full((1, 64), 0.5, np.float32)

        def http() -> None:
            client = thttp.InferenceServerClient(server.http_url)
            inp = thttp.InferInput("input", [1, 64], "FP32")
            inp.set_data_from_numpy(x)
            while not self._stop.wait(0.005):
                try:
                    client.infer("digits", [inp])
                    self.outcomes["ok"] += 1
                except Exception as exc:  # counted, not expected beyond reconnects
                    self.outcomes[f"http {type(exc).__name__}"] += 1
                    client = thttp.InferenceServerClient(server.http_url)

        def grpc() -> None:
            client = tgrpc.InferenceServerClient(server.grpc_url)
            inp = tgrpc.InferInput("input", [1, 64], "FP32")
            inp.set_data_from_numpy(x)
            while not self._stop.wait(0.005):
                try:
                    client.infer("digits_torch", [inp], client_timeout=10)
                    self.outcomes["ok"] += 1
                except Exception as exc:
                    self.outcomes[f"grpc {str(exc)[:60]}"] += 1

        self.threads = [threading.Thread(target=t, daemon=True) for t in (http, http, grpc)]
        for t in self.threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self.threads:
            t.join(30)


def plot(path: Path, minutes: list[float], rss: dict[str, list[float]], xlabel: str) -> None:
    """Two panels: resident memory by role in MiB, and each role's change from its median over
    minute 2 (the band of +-10 % drawn), where a small process's growth shows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    widest = 15.0
    for role, values in rss.items():
        style = {"color": "black", "linewidth": 2} if role == "all" else {}
        top.plot(minutes, values, label=role, **style)
        base = [v for m, v in zip(minutes, values, strict=True) if 1 <= m < 2]
        if base:
            ref = statistics.median(base)
            change = [100 * (v - ref) / ref for v in values]
            widest = max(widest, 2 + max(abs(c) for c in change))
            bottom.plot(minutes, change, label=role, **style)
    for edge in (-10, 10):
        bottom.axhline(edge, color="grey", linestyle="--", linewidth=1)
    top.set_ylabel("resident memory, MiB")
    top.set_title("serving soak: memory of every process the server started, by role")
    top.legend(loc="center right", fontsize=8, ncol=2)
    bottom.set_ylabel("change from minute 2, %")
    bottom.set_ylim(-widest, widest)
    bottom.set_xlabel(xlabel)
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--every", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--churn", choices=("versions", "rollout", "none"), default="versions")
    parser.add_argument("--no-load", action="store_true", help="no clients: the idle control")
    parser.add_argument("--out", default="soak", help="file stem under bench/results/")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    repo = build_demo_repository(work / "repo")
    shutil.copytree(repo / "digits" / "2", repo / "digits" / "3")  # the version that comes and goes
    server = ServerProcess(repo, work / "server.log", env={"SERVING_DRAIN_SECONDS": "5"})
    server.start()
    began = time.monotonic()
    samples: list[tuple[float, dict[str, tuple[float, int]]]] = []
    load = None if args.no_load else BoundedLoad(server)
    updates = 0
    try:
        next_update = began + 60
        while (now := time.monotonic()) - began < args.minutes * 60:
            samples.append((now - began, sample(server)))
            if now >= next_update and args.churn != "none":
                assert server.proc is not None
                if args.churn == "rollout":
                    server.proc.send_signal(signal.SIGHUP)  # rolling update: the replica is replaced
                else:
                    action = "unload" if updates % 2 == 0 else "load"  # v3 starts loaded (policy: all)
                    body = json.dumps({"parameters": {"version": 3}}).encode()
                    url = f"http://{server.http_url}/v2/repository/models/digits/{action}"
                    with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=120) as r:
                        assert r.status == 200
                updates += 1
                next_update += 60
            time.sleep(args.every)
    finally:
        if load is not None:
            load.stop()
        code = server.stop()
    roles = sorted({r for _, s in samples for r in s})
    end = args.minutes * 60
    churn = {
        "versions": "every minute digits v3 unloaded or loaded",
        "rollout": "every minute a rolling update",
        "none": "no churn",
    }[args.churn]

    def median(r: str, lo: float, hi: float, i: int) -> float:
        """Median over the samples in [lo, hi) of role r's RSS (i=0) or fds (i=1); r='all' sums."""
        vals = [
            sum(v[i] for v in s.values()) if r == "all" else s[r][i]
            for t, s in samples
            if lo <= t < hi and (r in s or r == "all")
        ]
        return float(statistics.median(vals)) if vals else float("nan")

    def change(a: float, b: float) -> str:
        return f"{(b - a) / a:+.1%}" if a else "n/a"

    late = end >= 20 * 60  # long enough to compare with minute 10 too, after Ray's own warm-up
    head = "| role | RSS MiB, minute 2 (median) |" + (" minute 10 |" if late else "") + " last minute | change |"
    head += (" change from minute 10 |" if late else "") + " fds, minute 2 | fds, last minute |"
    lines = [
        f"# make soak ({time.strftime('%Y-%m-%d %H:%M')}, {args.minutes:g} min, {churn}"
        + (f": {updates} times" if args.churn != "none" else "")
        + ("" if load else ", no load: the idle control")
        + ")",
        "",
        f"Outcomes: {dict(load.outcomes) if load else 'no load'}; server exit code {code}.",
        "",
        head,
        "|" + "---|" * (head.count("|") - 1),
    ]
    for r in [*roles, "all"]:
        first, last = median(r, 60, 120, 0), median(r, end - 60, end + 1, 0)
        tenth = median(r, 540, 600, 0)
        row = (
            f"| {r} | {first:,.1f} |" + (f" {tenth:,.1f} |" if late else "") + f" {last:,.1f} | {change(first, last)} |"
        )
        row += f" {change(tenth, last)} |" if late else ""
        row += f" {median(r, 60, 120, 1):,.0f} | {median(r, end - 60, end + 1, 1):,.0f} |"
        lines.append(row)
    text = "\n".join(lines) + "\n"
    print(text)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / f"{args.out}.md").write_text(text)
    with open(out / f"{args.out}.csv", "w") as f:  # every sample, for trends the windows above cannot show
        f.write("seconds," + ",".join(f"{r}_rss_mib,{r}_fds" for r in roles) + "\n")
        for t, sm in samples:
            f.write(f"{t:.0f}," + ",".join(f"{sm.get(r, (0, 0))[0]:.1f},{sm.get(r, (0, 0))[1]}" for r in roles) + "\n")
    rss = {r: [s.get(r, (0, 0))[0] for _, s in samples] for r in roles}
    rss["all"] = [sum(v[0] for v in s.values()) for _, s in samples]
    plot(out / f"{args.out}.png", [t / 60 for t, _ in samples], rss, f"minutes ({churn}{'' if load else ', no load'})")
    print(f"wrote {out / args.out}.md, .csv and .png")


if __name__ == "__main__":
    main()
