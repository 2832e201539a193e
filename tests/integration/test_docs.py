"""Every example in the README and the docs runs (or is validated) as printed.

A fenced ``bash``, ``python`` or ``yaml`` block carries an annotation on the line before it,
``<!-- doc-test: MODE -->``:

- ``server``: a shell block run against the server ``make serve`` started (below);
- ``python``: a Python block run with ``.venv/bin/python`` against that server;
- ``files``: a shell block run in a fresh folder of its page (no server needed);
- ``model.yaml`` / ``settings``: YAML validated as ``model.yaml`` or as server settings;
- ``skip: REASON``: not runnable on a test machine, and why.

``, exit N`` after the mode expects that exit status. Shell blocks run with ``bash -euo pipefail``
in a folder holding ``.venv`` (a link to this checkout's), so ``.venv/bin/serving`` works as in a
clone. The server is the real ``make serve``, run in this checkout with free ports
(``HTTP_PORT``, ``GRPC_PORT``, ``METRICS_PORT``) and its demo files in the test's folder
(``DEMO_REPO``, ``DEMO_DATA``); the only change made to a block is its ports: ``localhost:8000``
(and ``127.0.0.1:``, 8001, 8002) become the test server's, and ``serving``'s lifecycle commands
find it through ``SERVING_SERVER``. Every command the server's banner prints runs too.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from serving.config.model import ModelConfig
from serving.config.server import NO_FILE_CHECKS, ServerConfig

from server_process import BANNER, READY_TIMEOUT_S, STOP_TIMEOUT_S, free_port

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
ANNOTATION = re.compile(r"^\s*<!-- doc-test: (?P<mode>[\w.]+)(?P<rest>.*?) -->\s*$")
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w.]*)\s*$")
CHECKED_LANGUAGES = {"bash", "sh", "shell", "python", "yaml"}
MODES = {"server", "python", "files", "model.yaml", "settings", "skip"}
BLOCK_TIMEOUT_S = 300
PORT = re.compile(r"\b(?:localhost|127\.0\.0\.1):(800[012])\b")


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    code: str
    mode: str
    exit: int
    reason: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def read_blocks(page: Path) -> list[Block]:
    lines = page.read_text(encoding="utf-8").split("\n")
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence is None:
            i += 1
            continue
        indent, lang, start = fence["indent"], fence["lang"], i
        body = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
            i += 1
        i += 1
        before = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        note = ANNOTATION.match(before)
        mode, exit_code, reason = "", 0, ""
        if note is not None:
            mode, rest = note["mode"], note["rest"].strip()
            if mode == "skip":
                reason = rest.lstrip(":").strip()
            elif rest:
                found = re.fullmatch(r",\s*exit (\d+)", rest)
                assert found is not None, f"{page.name}:{start + 1}: cannot read {rest!r}"
                exit_code = int(found[1])
        blocks.append(Block(page, start + 1, lang or "text", "\n".join(body) + "\n", mode, exit_code, reason))
    return blocks


ALL_BLOCKS = [b for page in PAGES for b in read_blocks(page)]


def test_every_example_is_run_or_says_why_not() -> None:
    unmarked = [b.where for b in ALL_BLOCKS if b.lang in CHECKED_LANGUAGES and not b.mode]
    assert not unmarked, f"examples without a <!-- doc-test: ... --> annotation: {unmarked}"
    unknown = [(b.where, b.mode) for b in ALL_BLOCKS if b.mode and b.mode not in MODES]
    assert not unknown, unknown
    silent = [b.where for b in ALL_BLOCKS if b.mode == "skip" and len(b.reason) < 20]
    assert not silent, f"skipped without a reason: {silent}"
    assert sum(b.mode not in ("", "skip") for b in ALL_BLOCKS) >= 15  # the parser found the examples


def test_links_from_the_readme_reach_files() -> None:
    """The README is not part of the mkdocs site, whose build checks every other link."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    assert targets
    missing = [t for t in targets if not t.startswith("http") and not (ROOT / t).exists()]
    assert not missing, missing


@pytest.mark.parametrize(
    "block", [b for b in ALL_BLOCKS if b.mode in ("model.yaml", "settings")], ids=lambda b: b.where
)
def test_yaml_examples_validate(block: Block) -> None:
    doc = yaml.safe_load(block.code)
    assert isinstance(doc, dict), block.where
    if block.mode == "model.yaml":
        ModelConfig.model_validate({"platform": "onnx", **doc})
    else:
        ServerConfig.model_validate(doc, context=NO_FILE_CHECKS)


@dataclass
class DocServer:
    folder: Path
    ports: dict[str, int]
    banner: str

    def localize(self, code: str) -> str:
        return PORT.sub(lambda m: f"127.0.0.1:{self.ports[m[1]]}", code)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SERVING_SERVER": f"http://127.0.0.1:{self.ports['8000']}"}


def workspace(folder: Path) -> Path:
    """A folder as a clone's root looks to the examples: ``.venv`` and the repository's files."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in (".venv", "loadtests", "configs", "examples"):
        if not (folder / name).exists():
            (folder / name).symlink_to(ROOT / name)
    return folder


@pytest.fixture(scope="module")
def doc_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DocServer]:
    """``make serve`` as the README says, on free ports, with its demo files in the test's folder."""
    folder = workspace(tmp_path_factory.mktemp("docs-server"))
    ports: set[int] = set()
    while len(ports) < 3:
        ports.add(free_port())
    http, grpc, metrics = sorted(ports)
    log = folder / "make-serve.log"
    command = [
        "make",
        "serve",
        f"HTTP_PORT={http}",
        f"GRPC_PORT={grpc}",
        f"METRICS_PORT={metrics}",
        f"DEMO_REPO={folder / 'model_repository'}",
        f"DEMO_DATA={folder / 'demo_data'}",
        f"PREDICTION_LOG={folder / 'prediction_log'}",
    ]
    env = {**os.environ, "RAY_metrics_report_interval_ms": "1000", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S + 120  # + training the demo models
        while BANNER not in log.read_text(errors="replace"):
            assert proc.poll() is None, f"make serve exited {proc.returncode}:\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"make serve not ready:\n{log.read_text()[-4000:]}"
            time.sleep(0.25)
        text = log.read_text(errors="replace")
        yield DocServer(folder, {"8000": http, "8001": grpc, "8002": metrics}, text[text.index(BANNER) :])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C, to the group this test started
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    console = log.read_text(errors="replace")
    assert "\nstopped" in console, console[-4000:]
    noise = [line for line in console.split("\n") if any(marker in line for marker in RAY_NOISE)]
    assert not noise, f"Ray's own lines on the console without --verbose: {noise}"


RAY_NOISE = (
    "Token authentication is enabled",
    "Connecting to existing Serve app",
    "graceful_shutdown failed",
    "(ServeController pid=",
    "INFO worker.py",
)
"""What Ray and Serve print at a start and a Ctrl-C, which make serve's console leaves out."""


def run_shell(code: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT_S,
        check=False,
    )


def banner_commands(banner: str) -> list[str]:
    """The shell commands the banner prints (indented; a trailing backslash continues one)."""
    commands, current = [], ""
    for line in banner.split("\n"):
        if not current and not line.startswith("  "):
            continue
        current += line.strip() + "\n" if not current else line + "\n"
        if not line.rstrip().endswith("\\"):
            commands.append(current)
            current = ""
    return commands


def test_the_banners_commands_run_as_printed(doc_server: DocServer) -> None:
    commands = banner_commands(doc_server.banner.split("Press Ctrl-C")[0])
    assert len(commands) == 3, commands
    for command in commands:
        result = run_shell(command, doc_server.folder, doc_server.env)
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
        assert result.stdout.strip(), command
    assert "digits" in run_shell(commands[0], doc_server.folder, doc_server.env).stdout


SERVER_BLOCKS = [b for b in ALL_BLOCKS if b.mode in ("server", "python")]
FILE_BLOCKS = [b for b in ALL_BLOCKS if b.mode == "files"]


@pytest.mark.parametrize("block", SERVER_BLOCKS, ids=lambda b: b.where)
def test_server_examples_run_as_printed(block: Block, doc_server: DocServer) -> None:
    code = doc_server.localize(block.code)
    if block.mode == "python":
        script = doc_server.folder / f"example-{block.page.stem}-{block.line}.py"
        script.write_text(code, encoding="utf-8")
        result = run_shell(f".venv/bin/python {script.name}", doc_server.folder, doc_server.env)
    else:
        result = run_shell(code, doc_server.folder, doc_server.env)
    assert result.returncode == block.exit, f"{block.where}:\n{code}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    check_output(block, result)


def check_output(block: Block, result: subprocess.CompletedProcess[str]) -> None:
    """An example that should work printed no error answer (``curl -s`` exits 0 on a 404); one
    expected to fail failed as its ``# error: ...`` comment says (up to the numbers at its end)."""
    said = result.stdout + result.stderr
    if block.exit == 0:
        assert '{"error"' not in said, f"{block.where}: an error answer:\n{said[-3000:]}"
        return
    expected = [line.strip()[2:] for line in block.code.split("\n") if line.strip().startswith("# error: ")]
    assert expected, f"{block.where}: a failing example says what it prints in a '# error: ...' comment"
    assert expected[0].rsplit(":", 1)[0] in said, f"{block.where}: expected {expected[0]!r}, got:\n{said[-3000:]}"


@pytest.mark.parametrize("block", FILE_BLOCKS, ids=lambda b: b.where)
def test_file_examples_run_as_printed(block: Block, tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = workspace(tmp_path_factory.getbasetemp() / f"docs-{block.page.stem}")
    result = run_shell(block.code, folder, {**os.environ, "SERVING_SERVER": "http://127.0.0.1:1"})
    assert result.returncode == block.exit, f"{block.where}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    check_output(block, result)
