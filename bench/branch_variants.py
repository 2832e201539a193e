"""The branching pipeline of `bench/image_pipeline.py` (`digits_branch`) and its slowest step alone
(`digits_decode`) on several servers side by side, each a variant (another checkout's ``src`` on
PYTHONPATH, environment variables), perf_analyzer ``--async`` at 64 clients over gRPC alternating
between them, the order reversed every round. Per variant: the median of branch / decode, and the
median ratios of its branch and its decode rates to the first variant's in the same round (decode
alone is the control when a change touches pipelines only). A variant is NAME=[SRC][:VAR~VALUE,...]:

    git archive HEAD~1 src | tar -x -C /tmp/old    # (and copy the compiled front end into it)
    .venv/bin/python bench/branch_variants.py old=/tmp/old/src new= --rounds 6 --standalone
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from image_pipeline import branch_pipeline, input_file  # noqa: E402
from online import perf_analyzer  # noqa: E402

from serving.demo import build_demo_repository  # noqa: E402

from server_process import ServerProcess  # noqa: E402

MODELS = ("digits_branch", "digits_decode")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+", help="NAME=[SRC][:VAR~VALUE,...]")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--standalone", action="store_true", help="serve without Ray")
    args = parser.parse_args()
    subprocess.run(["bash", str(HERE / "perf_tools.sh")], check=True)  # perf_analyzer
    work = Path(tempfile.mkdtemp(prefix="serving-branch-variants-"))
    repo = build_demo_repository(work / "repo")
    branch_pipeline(repo)
    data, _ = input_file(work / "images.json")
    servers: dict[str, ServerProcess] = {}
    for k, spec in enumerate(args.variants):
        name, _, rest = spec.partition("=")
        src, _, extra = rest.partition(":")
        env = {"PYTHONPATH": src} if src else {}
        env.update(dict(kv.split("~", 1) for kv in extra.split(",") if kv))
        servers[name] = ServerProcess(
            repo, work / f"{k}.log", env=env, args=("--standalone",) if args.standalone else ()
        )
    rates: dict[str, dict[str, list[float]]] = {n: {m: [] for m in MODELS} for n in servers}
    names = list(servers)
    try:
        for s in servers.values():
            s.start()
        for s in servers.values():  # warm up
            for m in MODELS:
                perf_analyzer(s.grpc_url, "grpc", m, "1", 64, data, extra=("--async",))
        for r in range(args.rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                for m in MODELS if r % 2 == 0 else MODELS[::-1]:
                    got = perf_analyzer(servers[name].grpc_url, "grpc", m, "1", 64, data, extra=("--async",))
                    rates[name][m].append(got["infer_s"])
            print(
                f"round {r + 1}: "
                + "  ".join(f"{n} {rates[n][MODELS[0]][-1]:,.0f} / {rates[n][MODELS[1]][-1]:,.0f}" for n in names),
                flush=True,
            )
    finally:
        for s in servers.values():
            s.stop()
    first = names[0]
    print(f"\n| variant | branch / decode | branch / {first}'s | decode / {first}'s |")
    print("|---|---|---|---|")
    for n in names:
        b, d = rates[n][MODELS[0]], rates[n][MODELS[1]]
        share = statistics.median(x / y for x, y in zip(b, d))
        vs_b = statistics.median(x / y for x, y in zip(b, rates[first][MODELS[0]]))
        vs_d = statistics.median(x / y for x, y in zip(d, rates[first][MODELS[1]]))
        print(f"| {n} | {share:.2f} | {vs_b:.3f} | {vs_d:.3f} |")


if __name__ == "__main__":
    main()
