"""The operator page (/ui), CORS and the OpenAPI document, in a real headless browser (Debian's
chromium driven by Playwright) against a real server: the page loads offline with no console
errors, lists the models, its charts move under load, "try it" answers as tritonclient does,
failed requests show up, and a page on another origin may call the server only when allowed."""

from __future__ import annotations

import http.server
import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as thttp
from playwright.sync_api import Browser, Page, sync_playwright

from serving.demo import build_demo_dataset, digits_data, png_bytes

from models import build_demo_repository
from server_process import MODES, ServerProcess, free_port, mode_args

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Debian's chromium, headless, with nothing of its own reaching out (this machine's network is closed).
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-default-apps",
]  # fmt: skip


class StaticSite:
    """A page on its own origin (another port) that calls the server with fetch()."""

    def __init__(self) -> None:
        page = b"<!doctype html><html><head><title>app</title><link rel='icon' href='data:,'></head><body>app</body></html>"

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/html")
                self.send_header("content-length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args: Any) -> None:
                pass

        self.port = free_port()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


@pytest.fixture(scope="module")
def sites() -> Iterator[tuple[StaticSite, StaticSite]]:
    allowed, other = StaticSite(), StaticSite()
    yield allowed, other
    allowed.close()
    other.close()


@pytest.fixture(scope="module", params=MODES)
def web_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, sites: tuple[StaticSite, StaticSite]
) -> Iterator[ServerProcess]:
    """The demo repository served in each mode (the page is the same in both)."""
    repo = build_demo_repository(tmp_path_factory.mktemp("web-repo"))
    allowed, _ = sites
    server = ServerProcess(
        repo,
        tmp_path_factory.mktemp("web-logs") / "server.log",
        env={"SERVING_CORS__ALLOW_ORIGINS": json.dumps([allowed.origin])},
        args=mode_args(request.param),
    )
    server.start()
    yield server
    assert server.stop() == 0, server.log()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


class OpenPage:
    """The operator page in a fresh tab, with every console error and request URL recorded."""

    def __init__(self, browser: Browser, server: ServerProcess) -> None:
        self.console_errors: list[str] = []
        self.requests: list[str] = []
        self.page: Page = browser.new_page(viewport={"width": 1400, "height": 1100})
        self.page.on("console", lambda m: self.console_errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.console_errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.goto(f"http://{server.http_url}/ui")
        self.page.wait_for_selector('#models tbody tr[data-model="digits"]', timeout=30_000)

    def close(self) -> None:
        self.page.close()


@pytest.fixture
def ui(browser: Browser, web_server: ServerProcess) -> Iterator[OpenPage]:
    page = OpenPage(browser, web_server)
    yield page
    page.close()


def load(server: ServerProcess, seconds: float, threads: int = 3) -> None:
    """Real inference requests from tritonclient for ``seconds``."""
    x, _ = digits_data()

    def run() -> None:
        client = thttp.InferenceServerClient(server.http_url)
        inp = thttp.InferInput("input", [1, 64], "FP32")
        deadline = time.monotonic() + seconds
        i = 0
        while time.monotonic() < deadline:
            inp.set_data_from_numpy(x[i % len(x) : i % len(x) + 1])
            client.infer("digits", [inp])
            i += 1
        client.close()

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(seconds + 30)


def test_the_page_loads_offline_without_console_errors_and_lists_the_models(
    ui: OpenPage, web_server: ServerProcess
) -> None:
    rows = ui.page.locator("#models tbody tr")
    found = {(r.get_attribute("data-model"), r.get_attribute("data-version")) for r in rows.all()}
    assert {("digits", "1"), ("digits", "2"), ("digits_torch", "1")} <= found
    assert "READY" in ui.page.locator('#models tr[data-model="digits"]').first.inner_text()
    ui.page.wait_for_timeout(2500)  # a few polls
    assert ui.console_errors == []
    origin = f"http://{web_server.http_url}/"
    assert ui.requests and all(u.startswith(origin) or u.startswith("data:") for u in ui.requests), ui.requests
    weight = sum(len(urllib.request.urlopen(f"{origin}ui/{f}", timeout=10).read()) for f in ("", "app.js", "style.css"))
    assert weight < 300_000


def test_the_throughput_chart_moves_under_load(ui: OpenPage, web_server: ServerProcess) -> None:
    loader = threading.Thread(target=load, args=(web_server, 8.0))
    loader.start()
    try:
        ui.page.wait_for_function(
            "() => parseFloat(document.getElementById('chart-throughput').dataset.last || '0') > 0"
            " && parseInt(document.getElementById('chart-throughput').dataset.points || '0') >= 2",
            timeout=30_000,
        )
        rate = float(ui.page.locator("#rate-total").inner_text().replace(",", ""))
        assert rate > 0
        digits = ui.page.locator('#models tr[data-model="digits"][data-version="2"] td').all_inner_texts()
        assert float(digits[6].replace(",", "")) > 0  # req/s of the version that served the load
    finally:
        loader.join()
    assert ui.console_errors == []


@pytest.mark.parametrize("binary", [False, True])
def test_try_it_answers_as_tritonclient_does(ui: OpenPage, web_server: ServerProcess, binary: bool) -> None:
    x, _ = digits_data()
    sample = x[7:8]
    client = thttp.InferenceServerClient(web_server.http_url)
    inp = thttp.InferInput("input", [1, 64], "FP32")
    inp.set_data_from_numpy(sample)
    want = client.infer("digits", [inp], model_version="2")
    ui.page.select_option("#try-model", "digits:2")
    ui.page.wait_for_selector('.try-data[data-input="input"]')
    ui.page.fill('.try-data[data-input="input"]', json.dumps(sample[0].astype(float).tolist()))
    if binary:
        ui.page.check("#try-binary")
    ui.page.click("#try-send")
    ui.page.wait_for_function("() => document.getElementById('try-output').dataset.status === '200'", timeout=20_000)
    answer = json.loads(ui.page.locator("#try-output").inner_text())
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert outputs["label"]["data"] == want.as_numpy("label").reshape(-1).tolist()
    np.testing.assert_allclose(outputs["probabilities"]["data"], want.as_numpy("probabilities").reshape(-1), rtol=1e-6)
    assert answer["model_version"] == "2"
    assert ui.page.locator("#try-latency").inner_text().endswith("ms")
    assert ui.console_errors == []


def test_try_it_sends_image_files_to_the_image_pipeline(
    ui: OpenPage, web_server: ServerProcess, tmp_path: Path
) -> None:
    x, target = digits_data()
    files = []
    for i in (3, 4):
        path = tmp_path / f"digit-{i}.png"
        path.write_bytes(png_bytes(x[i], side=32))
        files.append(str(path))
    ui.page.select_option("#try-model", "digits_image:1")
    ui.page.wait_for_selector('.try-file[data-input="image"]')
    ui.page.set_input_files('.try-file[data-input="image"]', files)
    ui.page.wait_for_function("() => document.querySelector('.try-shape[data-input=\"image\"]').value === '[2,1]'")
    ui.page.click("#try-send")
    ui.page.wait_for_function("() => document.getElementById('try-output').dataset.status === '200'", timeout=20_000)
    answer = json.loads(ui.page.locator("#try-output").inner_text())
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert outputs["label"]["data"] == [str(target[3]), str(target[4])]
    assert ui.console_errors == []


def test_a_failed_request_shows_in_recent_errors(ui: OpenPage, web_server: ServerProcess) -> None:
    request_id = f"ui-test-{time.monotonic_ns()}"
    req = urllib.request.Request(
        f"http://{web_server.http_url}/v2/models/digits/infer",
        data=b'{"inputs":[{"name":"input","datatype":"FP32","shape":[1,3],"data":[1,2,3]}]}',
        headers={"X-Request-ID": request_id},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 400
    ui.page.wait_for_selector(f"#errors td:text-is('{request_id}')", timeout=20_000)
    row = ui.page.locator("#errors tr", has_text=request_id).inner_text()
    assert "digits" in row and "400 INVALID_ARGUMENT" in row


FETCH = """async (url) => {
  try {
    const r = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({inputs: [{name: "input", datatype: "FP32", shape: [1, 64], data: new Array(64).fill(0.5)}]})});
    return {status: r.status, header: r.headers.get("Inference-Header-Content-Length"), body: await r.json()};
  } catch (e) { return {error: String(e)}; }
}"""


def test_a_page_on_another_origin_may_call_the_server_only_when_allowed(
    browser: Browser, web_server: ServerProcess, sites: tuple[StaticSite, StaticSite]
) -> None:
    allowed, other = sites
    url = f"http://{web_server.http_url}/v2/models/digits/infer"
    page = browser.new_page()
    try:
        page.goto(allowed.origin)
        ok = page.evaluate(FETCH, url)
        assert ok.get("status") == 200, ok
        assert ok["body"]["model_name"] == "digits"
        page.goto(other.origin)
        refused = page.evaluate(FETCH, url)
        assert "error" in refused and "Failed to fetch" in refused["error"], refused
    finally:
        page.close()
    # The preflight answers, as a client sees them.
    for origin, status in ((allowed.origin, 204), (other.origin, 403)):
        req = urllib.request.Request(
            url, method="OPTIONS", headers={"Origin": origin, "Access-Control-Request-Method": "POST"}
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                got, allow = r.status, r.headers.get("access-control-allow-origin")
        except urllib.error.HTTPError as e:
            got, allow = e.code, e.headers.get("access-control-allow-origin")
        assert got == status
        assert allow == (origin if status == 204 else None)


def test_binary_tensors_work_from_fetch_on_an_allowed_origin(
    browser: Browser, web_server: ServerProcess, sites: tuple[StaticSite, StaticSite]
) -> None:
    """The binary extension from a browser app: Inference-Header-Content-Length is exposed."""
    allowed, _ = sites
    page = browser.new_page()
    try:
        page.goto(allowed.origin)
        result = page.evaluate(
            """async (url) => {
              const head = new TextEncoder().encode(JSON.stringify({
                inputs: [{name: "input", datatype: "FP32", shape: [1, 64], parameters: {binary_data_size: 256}}],
                outputs: [{name: "label", parameters: {binary_data: true}}]}));
              const r = await fetch(url, {method: "POST", body: new Blob([head, new Float32Array(64).fill(0.5)]),
                headers: {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": String(head.length)}});
              const n = parseInt(r.headers.get("Inference-Header-Content-Length"), 10);
              const raw = new Uint8Array(await r.arrayBuffer());
              const header = JSON.parse(new TextDecoder().decode(raw.slice(0, n)));
              return {status: r.status, n, size: header.outputs[0].parameters.binary_data_size, rest: raw.length - n};
            }""",
            f"http://{web_server.http_url}/v2/models/digits/infer",
        )
    finally:
        page.close()
    assert result["status"] == 200 and result["n"] > 0 and result["size"] == result["rest"] == 8  # one INT64 label


def test_the_openapi_document_describes_the_routes_the_server_answers(web_server: ServerProcess) -> None:
    from jsonschema import Draft202012Validator
    from openapi_spec_validator import validate

    base = f"http://{web_server.http_url}"
    with urllib.request.urlopen(f"{base}/v2/openapi.json", timeout=10) as r:
        doc = json.load(r)
    validate(doc)
    for path in ("/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/{model}", "/v2/models/{model}/infer",
                 "/v2/models/{model}/versions/{version}/infer", "/v2/models/{model}/config", "/v2/models/stats",
                 "/v2/repository/index"):  # fmt: skip
        assert path in doc["paths"], path
    schemas = doc["components"]["schemas"]

    def validator(name: str) -> Draft202012Validator:
        """One of the document's schemas, its references resolved within the document."""
        text = json.dumps(schemas[name]).replace("#/components/schemas/", "#/$defs/")
        return Draft202012Validator({**json.loads(text), "$defs": schemas})

    # Answers of the running server validate against the document's own schemas.
    with urllib.request.urlopen(f"{base}/v2/models/digits", timeout=10) as r:
        validator("ModelMetadata").validate(json.load(r))
    with urllib.request.urlopen(f"{base}/v2", timeout=10) as r:
        validator("ServerMetadata").validate(json.load(r))
    request = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}]}
    validator("InferenceRequest").validate(request)
    req = urllib.request.Request(f"{base}/v2/models/digits/infer", data=json.dumps(request).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        validator("InferenceResponse").validate(json.load(r))
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{base}/v2/models/nope", timeout=10)
    assert str(err.value.code) in doc["paths"]["/v2/models/{model}"]["get"]["responses"]
    validator("Error").validate(json.load(err.value))


@pytest.mark.parametrize("mode", MODES)
def test_the_stats_endpoint_sums_every_replica_whichever_answers(tmp_path: Path, mode: str) -> None:
    """Two replicas (standalone: two workers) on the same ports: whichever answers /ui/api/stats,
    it counts both and every request either served."""
    repo = build_demo_repository(tmp_path / "repo")
    server = ServerProcess(repo, tmp_path / "server.log", args=mode_args(mode, 2))
    server.start()
    try:
        body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}]})
        for _ in range(40):  # a new connection each: the kernel spreads them over both replicas
            req = urllib.request.Request(
                f"http://{server.http_url}/v2/models/digits/infer", data=body.encode(), method="POST"
            )
            with urllib.request.urlopen(req, timeout=30) as r:
                assert r.status == 200
        deadline = time.monotonic() + 30
        while True:
            answers = []
            for _ in range(6):  # new connections: several replicas answer
                with urllib.request.urlopen(f"http://{server.http_url}/ui/api/stats", timeout=10) as r:
                    answers.append(json.load(r))
            totals = [sum(m["requests"] for m in a["models"] if m["model"] == "digits") for a in answers]
            if all(len(a["replicas"]) == 2 for a in answers) and totals == [40] * len(answers):
                break
            assert time.monotonic() < deadline, (totals, [a["replicas"] for a in answers])
            time.sleep(0.5)
        served = {a["replicas"][0]["replica"] for a in answers}  # each answer lists the answering replica first
        print(f"stats answered by replicas {sorted(served)}: 40 requests counted by each")
    finally:
        assert server.stop() == 0, server.log()


def test_a_page_opened_after_traffic_draws_the_last_minutes_at_once(
    browser: Browser, web_server: ServerProcess
) -> None:
    load(web_server, 6.0)  # no page open meanwhile
    stats = f"http://{web_server.http_url}/ui/api/stats?history=1"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the server keeps a summary every 5 s: two after the load
        with urllib.request.urlopen(stats, timeout=10) as r:
            history = json.loads(r.read())["history"]
        if len(history) >= 3:
            break
        time.sleep(1)
    page = OpenPage(browser, web_server)  # returns once the first answer is drawn
    try:
        drawn = page.page.evaluate("() => ({points: series.length, busy: series.some((p) => p.byScope[''].rate > 0)})")
        assert drawn["points"] >= 2 and drawn["busy"], drawn
        assert int(page.page.locator("#chart-throughput").get_attribute("data-points") or "0") >= 2
        assert page.console_errors == []
    finally:
        page.close()


def test_the_models_table_shows_each_versions_worst_slice(
    browser: Browser, web_server: ServerProcess, tmp_path: Path
) -> None:
    data = build_demo_dataset(tmp_path / "digits")
    evaluated = subprocess.run(
        [str(Path(sys.executable).parent / "serving"), "evaluate", "digits:2", "--data", str(data), "--label", "target",
         "--slice-by", "split", "--repository", str(web_server.repository), "--executor", "local"],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
    assert "slice split=test" in evaluated.stdout and "slice split=train" in evaluated.stdout
    page = OpenPage(browser, web_server)
    try:
        row = page.page.locator('#models tr[data-model="digits"][data-version="2"]')
        row.locator("td.slice", has_text="split=").wait_for(timeout=30_000)
        shown = row.locator("td.slice").inner_text()
        assert "accuracy" in shown and "overall" in shown, shown
        assert (
            page.page.locator('#models tr[data-model="digits"][data-version="1"] td.slice').inner_text() == "\u2013"
        )  # an en dash: no slices
        assert page.console_errors == []
    finally:
        page.close()
