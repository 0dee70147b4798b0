"""The web dashboard's HTTP server and its decisions: routes (traversal refused), content
types, /config.json, reports, the model zoo, the WebSocket URL, and `edgeagent dashboard`.
No browser here: tests/test_dashboard.py drives the page in chromium."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeagent.bridges.dashboard import ORT_WEB, DashboardServer, probe_websockets
from edgeagent.bridges.dashboard_config import (
    DashboardError,
    PageConfig,
    Route,
    derive_ws_url,
    remote_note,
    route,
)
from edgeagent.cli import main
from edgeagent.localbroker import Mosquitto

ROOT = Path(__file__).resolve().parent.parent

# ------------------------------------------------------------------------------------------
# Pure decisions


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/", Route("static", "index.html")),
        ("/index.html?x=1", Route("static", "index.html")),
        ("/vendor/mqtt/mqtt.min.js", Route("static", "vendor/mqtt/mqtt.min.js")),
        ("/config.json", Route("config")),
        ("/report/", Route("report", "report.html")),
        ("/report", Route("report", "report.html")),
        ("/report/a.png", Route("report", "a.png")),
        ("/models/digits.onnx", Route("model", "digits/digits.onnx")),
        ("/models/../digits.onnx", Route("refused")),
        ("/models/Digits.onnx", Route("static", "models/Digits.onnx")),  # not a zoo name: 404
        ("/../pyproject.toml", Route("refused")),
        ("/%2e%2e/%2e%2e/etc/passwd", Route("refused")),
        ("/vendor/../../agent/cli.py", Route("refused")),
        ("/report/../../etc/passwd", Route("refused")),
        ("/.git/config", Route("refused")),
        ("/a%5c..%5cb", Route("refused")),
        ("/a%00b", Route("refused")),
        ("x" * 2000, Route("too_long")),
    ],
)
def test_route(raw: str, expected: Route) -> None:
    assert route(raw) == expected


def test_ws_url_explicit_derived_or_explained() -> None:
    probed: list[tuple[str, int]] = []

    def probe(host: str, port: int) -> bool:
        probed.append((host, port))
        return port == 9001

    assert derive_ws_url("mqtt://x:1", "ws://h:9", probe) == "ws://h:9"
    assert probed == []
    assert derive_ws_url("mqtt://127.0.0.1:1883", None, probe) == "ws://127.0.0.1:9001"
    assert probed == [("127.0.0.1", 9001)]
    with pytest.raises(DashboardError, match="protocol websockets"):
        derive_ws_url("mqtt://broker.example:1883", None, probe)  # not local: never probed
    assert len(probed) == 1
    with pytest.raises(DashboardError, match="listener 9001"):
        derive_ws_url("mqtt://localhost:1883", None, lambda h, p: False)
    with pytest.raises(DashboardError, match="expected ws://"):
        derive_ws_url("mqtt://x:1", "http://h:9", probe)


def test_remote_viewers_are_warned_about_a_loopback_ws_url() -> None:
    assert remote_note("127.0.0.1", "ws://127.0.0.1:9001") is None
    assert remote_note("0.0.0.0", "ws://pi.local:9001") is None
    note = remote_note("0.0.0.0", "ws://127.0.0.1:9001")
    assert note is not None
    assert "--ws-url" in note


# ------------------------------------------------------------------------------------------
# The HTTP server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DashboardServer]:
    report = tmp_path_factory.mktemp("report")
    (report / "report.html").write_text("<h1>sim report</h1>")
    page = PageConfig(ws_url="ws://127.0.0.1:1", fleet="f1", root="r1", report=True)
    with DashboardServer(page, port=0, report_dir=report) as s:
        yield s


def get(
    server: DashboardServer, path: str, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)  # the path is sent as is
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_config_json(server: DashboardServer) -> None:
    status, headers, body = get(server, "/config.json")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert headers["cache-control"] == "no-store"
    assert json.loads(body) == {
        "ws_url": "ws://127.0.0.1:1", "fleet": "f1", "root": "r1", "report": "/report/"
    }  # fmt: skip


@pytest.mark.parametrize(
    ("path", "mime"),
    [
        ("/", "text/html; charset=utf-8"),
        ("/dashboard.js", "text/javascript; charset=utf-8"),
        ("/common.js", "text/javascript; charset=utf-8"),
        ("/dashboard.css", "text/css; charset=utf-8"),
        ("/vendor/mqtt/mqtt.min.js", "text/javascript; charset=utf-8"),
        ("/vendor/onnxruntime-web/ort-wasm-simd-threaded.wasm", "application/wasm"),
        ("/vendor/onnxruntime-web/ort-wasm-simd-threaded.mjs", "text/javascript; charset=utf-8"),
    ],
)
def test_static_files_and_types(server: DashboardServer, path: str, mime: str) -> None:
    status, headers, body = get(server, path)
    assert status == 200, body
    assert headers["content-type"] == mime
    assert headers["x-content-type-options"] == "nosniff"
    assert int(headers["content-length"]) == len(body) > 0
    rel = path.lstrip("/") or "index.html"
    if rel.startswith(ORT_WEB):  # its own distribution (packages/edgeagent-web)
        packaged = ROOT / "packages/edgeagent-web/edgeagent_web/onnxruntime-web"
        packaged /= rel.removeprefix(ORT_WEB)
    else:
        packaged = ROOT / "bridges" / "web" / rel
    assert body == packaged.read_bytes()


def test_onnxruntime_web_missing_is_a_404_that_says_what_to_install(
    server: DashboardServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("edgeagent.bridges.dashboard.ort_web_root", lambda: None)
    status, _, body = get(server, "/vendor/onnxruntime-web/ort.wasm.min.js")
    assert status == 404
    assert b"pip install 'edgeagent[browser]'" in body
    assert get(server, "/vendor/mqtt/mqtt.min.js")[0] == 200  # in edgeagent's own wheel


def test_page_has_a_content_security_policy(server: DashboardServer) -> None:
    _, headers, _ = get(server, "/")
    assert "script-src 'self'" in headers["content-security-policy"]
    status, headers, body = get(server, "/", method="HEAD")
    assert status == 200
    assert body == b""
    assert int(headers["content-length"]) > 0


@pytest.mark.parametrize(
    "path",
    [
        "/../pyproject.toml",
        "/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/vendor/../../dashboard.py",
        "/report/../../../etc/passwd",
        "/.hidden",
        "/..%2f..%2fagent%2fcli.py",
    ],
)
def test_traversal_refused(server: DashboardServer, path: str) -> None:
    status, _, body = get(server, path)
    assert status == 403, body
    assert b"root:" not in body
    assert b"import" not in body


def test_not_found_and_report(server: DashboardServer) -> None:
    assert get(server, "/nope.js")[0] == 404
    assert get(server, "/vendor/")[0] == 404  # a folder is not a file
    status, headers, body = get(server, "/report/")
    assert (status, body) == (200, b"<h1>sim report</h1>")
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert get(server, "/report/missing.png")[0] == 404
    assert get(server, "/" + "a" * 1100)[0] == 414


def test_zoo_models_for_the_browser_tab(server: DashboardServer) -> None:
    status, headers, body = get(server, "/models/digits.onnx")
    assert status == 200
    assert headers["content-type"] == "application/octet-stream"
    assert body == (ROOT / "models" / "zoo" / "digits" / "digits.onnx").read_bytes()
    assert get(server, "/models/nope.onnx")[0] == 404
    assert get(server, "/models/Digits.onnx")[0] == 404


def test_no_report_folder_is_404() -> None:
    page = PageConfig(ws_url="ws://127.0.0.1:1", fleet="f", root="r", report=False)
    with DashboardServer(page, port=0) as s:
        status, _, body = get(s, "/report/")
        assert status == 404
        assert b"--report" in body
        assert json.loads(get(s, "/config.json")[2])["report"] is None


@pytest.mark.broker
def test_probe_finds_mqtt_over_websockets() -> None:
    with Mosquitto(websockets=True) as broker:
        assert broker.ws_port is not None
        assert probe_websockets("127.0.0.1", broker.ws_port)
        assert not probe_websockets("127.0.0.1", broker.port)  # plain MQTT: no upgrade


def test_cli_explains_how_to_enable_websockets() -> None:
    result = CliRunner().invoke(main, ["--broker", "mqtt://broker.example:1883", "dashboard"])
    assert result.exit_code == 1
    assert "listener 9001" in result.output
    assert "protocol websockets" in result.output


def test_cli_serves_until_sigterm() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgeagent.cli",
            "--fleet",
            "f9",
            "dashboard",
            "--port",
            "0",
            "--ws-url",
            "ws://127.0.0.1:9",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("dashboard at http://127.0.0.1:"), line
        port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/config.json")
        cfg = json.loads(conn.getresponse().read())
        conn.close()
        assert (cfg["fleet"], cfg["ws_url"], cfg["root"]) == ("f9", "ws://127.0.0.1:9", "edgeagent")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                f.close()
