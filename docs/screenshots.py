"""Screenshots of the operator page with load running (`make screenshots`): a real server on the
demo repository, tritonclient load on two models plus a few bad requests, Debian's chromium.
Writes docs/operator-page.png and docs/operator-try-it.png."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import tritonclient.http as thttp
from playwright.sync_api import sync_playwright

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from serving.demo import digits_data  # noqa: E402

from server_process import ServerProcess  # noqa: E402

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]  # fmt: skip


def load(server: ServerProcess, stop: threading.Event, model: str, version: str) -> None:
    x, _ = digits_data()
    client = thttp.InferenceServerClient(server.http_url)
    i = 0
    while not stop.is_set():
        rows = 1 + i % 8
        inp = thttp.InferInput("input", [rows, 64], "FP32")
        inp.set_data_from_numpy(x[i % 1000 : i % 1000 + rows])
        client.infer(model, [inp], model_version=version)
        i += 1
    client.close()


def bad_requests(server: ServerProcess) -> None:
    bodies = [b'{"inputs":[{"name":"input","datatype":"FP32","shape":[1,3],"data":[1,2,3]}]}', b"{not json", b"{}"]
    for n, body in enumerate(bodies):
        req = urllib.request.Request(
            f"http://{server.http_url}/v2/models/digits/infer",
            data=body,
            method="POST",
            headers={"X-Request-ID": f"demo-bad-{n}"},
        )
        try:
            urllib.request.urlopen(req, timeout=10)
        except urllib.error.HTTPError:
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--seconds", type=float, default=40.0, help="load before the screenshot")
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="screenshots-"))
    server = ServerProcess(args.repository, logs / "server.log")
    server.start()
    stop = threading.Event()
    workers = [
        threading.Thread(target=load, args=(server, stop, "digits", "2")),
        threading.Thread(target=load, args=(server, stop, "digits", "2")),
        threading.Thread(target=load, args=(server, stop, "digits_torch", "1")),
    ]
    try:
        for w in workers:
            w.start()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium", args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1200}, device_scale_factor=1)
            page.goto(f"http://{server.http_url}/ui")
            deadline = time.monotonic() + args.seconds
            while time.monotonic() < deadline:
                time.sleep(5)
                bad_requests(server)
            page.screenshot(path=str(HERE / "operator-page.png"), full_page=True)
            x, _ = digits_data()
            page.select_option("#try-model", "digits:2")
            page.wait_for_selector('.try-data[data-input="input"]')
            page.fill('.try-data[data-input="input"]', json.dumps(x[3].astype(float).tolist()))
            page.click("#try-send")
            page.wait_for_function("() => document.getElementById('try-output').dataset.status === '200'")
            page.locator("#try-panel").screenshot(path=str(HERE / "operator-try-it.png"))
            browser.close()
    finally:
        stop.set()
        for w in workers:
            w.join(30)
        server.stop()
    print(f"wrote {HERE / 'operator-page.png'} and {HERE / 'operator-try-it.png'}")


if __name__ == "__main__":
    main()
