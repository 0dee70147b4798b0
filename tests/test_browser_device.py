"""A browser tab joins the fleet: bridges/web/device.html in a real headless chromium.

One private mosquitto (with its websockets listener), one static server for bridges/web and the
zoo's digits model, one coordinator process and one browser serve the whole module. The page
announces itself over MQTT 5 on WebSockets, serves `read_digit` with onnxruntime-web, and the
coordinator routes calls to it like to any other device; the answers are compared with Python's
ONNX Runtime on the same inputs.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import numpy as np
import onnxruntime
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from smarthome.meter import DigitReader

from edgeagent import BadRequest, CallError, Fleet, NotFound
from edgeagent.demo import DIGIT_THREE
from edgeagent.localbroker import Mosquitto
from edgeagent.models.zoo.digits import featurize
from edgeagent.protocol import Health, Manifest, StateMessage, decode_reply
from edgeagent.skills import collect_skills
from tests.agents import Retained, port_of, running_agent
from tests.browser_device_helpers import MODEL, ROOT, chromium, needs_chromium, static_site

pytest.importorskip("playwright.sync_api")

EXAMPLES = ROOT / "examples" / "smart-home"
T = TypeVar("T")

pytestmark = [pytest.mark.broker, needs_chromium]


# Fixtures ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Env:
    broker_url: str  # mqtt:// for Python
    ws_url: str  # ws:// for the page
    web: str  # http://127.0.0.1:PORT
    fleet: str
    browser: Any  # playwright Browser
    broker: Mosquitto


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    fleet = f"t{uuid.uuid4().hex[:10]}"
    work = tempfile.TemporaryDirectory(prefix="ea-tab-")
    meter = Path(work.name) / "meter.yaml"
    meter.write_text(
        f"device: meter-py\nfleet: {fleet}\ntags: {{kind: meter}}\n"
        "skills:\n  - module: smarthome.meter:DigitReader\n"
    )
    with (
        Mosquitto(websockets=True) as broker,
        tempfile.TemporaryFile() as coord_log,
        running_agent(str(meter), broker.url, fleet, "meter-py"),
        static_site({"ws_url": broker.ws_url or "", "fleet": fleet, "root": "edgeagent"}) as web,
        chromium() as browser,
        work,
    ):
        coordinator = subprocess.Popen(
            [sys.executable, "-m", "edgeagent.cli", "--broker", broker.url, "--fleet", fleet,
             "coordinator", "run"],
            stdout=subprocess.DEVNULL, stderr=coord_log,
            env={**os.environ, "PYTHONPATH": str(EXAMPLES)},
        )  # fmt: skip
        try:
            assert broker.ws_url is not None
            yield Env(broker.url, broker.ws_url, web, fleet, browser, broker)
        finally:
            coordinator.terminate()
            coordinator.wait(10)


def page_url(env: Env, device: str, *, served: bool = False, **extra: str) -> str:
    """The page as device ``device``: broker and fleet in the query string, or (``served``)
    left to the server's /config.json as the dashboard serves it."""
    named = {} if served else {"broker": env.ws_url, "fleet": env.fleet}
    return f"{env.web}/device.html?{urlencode({**named, 'device': device, **extra})}"


def open_device(env: Env, device: str, *, served: bool = False, **extra: str) -> Any:
    """A new page that is device `device`, once it says it is online."""
    page = env.browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(page_url(env, device, served=served, **extra))
    try:
        page.wait_for_function(
            "document.getElementById('status').textContent === 'online'", timeout=20_000
        )
    except Exception:
        status = page.text_content("#status")
        raise AssertionError(f"{device} never came online: {status!r}; errors {errors}") from None
    return page


@pytest.fixture(scope="module")
def tab(env: Env) -> Iterator[Any]:
    page = open_device(env, "tab-1", health="1", tags="room=office")
    yield page
    page.close()


def in_thread(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine on its own loop in a worker thread (playwright's sync API owns this one)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result(timeout=60)  # type: ignore[arg-type]


def python_answer(pixels: Sequence[float]) -> tuple[int, float]:
    session = onnxruntime.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"pixels": featurize(pixels)[None, :]})[0][0]
    p = np.exp(logits.astype(np.float64) - logits.max())
    p /= p.sum()
    return int(p.argmax()), float(p.max())


def sample_digits() -> list[tuple[str, list[float]]]:
    """DIGIT_THREE and one scikit-learn image of each of 0, 5, 7, 9."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    picks = [("demo 3", [float(v) for v in DIGIT_THREE])]
    for digit in (0, 5, 7, 9):
        i = int(np.flatnonzero(bunch.target == digit)[0])
        picks.append((f"sklearn #{i} ({digit})", [float(v) for v in bunch.data[i]]))
    return picks


async def until_routed_to_the_tab(fleet: Fleet, timeout: float = 15.0) -> None:
    """Wait until the coordinator routes to the tab (it learns of it from its retained manifest;
    on a loaded machine the page may also have reconnected and announced itself again)."""
    pixels = [float(v) for v in DIGIT_THREE]
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            await fleet.call_skill("read_digit", {"pixels": pixels}, where={"kind": "browser"})
            return
        except NotFound:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.1)


# Tests -------------------------------------------------------------------------------------------


def test_the_tab_announces_a_valid_manifest_state_and_health(env: Env, tab: Any) -> None:
    base = f"edgeagent/{env.fleet}/dev/tab-1"
    watch = Retained(env.broker_url, f"{base}/#")
    try:
        state = StateMessage.model_validate(watch.wait_for(f"{base}/state", "status", "online"))
        assert state.device == "tab-1"
        assert state.ts is not None
        watch.wait_for(f"{base}/manifest", "type", "manifest")
        manifest = Manifest.model_validate_json(watch.latest[f"{base}/manifest"])
        health = Health.model_validate(watch.wait_for(f"{base}/health", "type", "health"))
    finally:
        watch.close()
    assert manifest.protocol == 1
    assert manifest.fleet == env.fleet
    assert manifest.device == "tab-1"
    assert manifest.tags == {"kind": "browser", "room": "office"}
    assert manifest.agent_version.startswith("browser/")
    (spec,) = manifest.skills
    (meter,) = [s.spec for s in collect_skills(DigitReader()) if s.name == "read_digit"]
    # The same skill as the meter's: the coordinator routes either.
    assert spec.model_dump() == meter.model_dump()
    assert health.device == "tab-1"
    assert "read_digit" in health.skills


def test_the_coordinator_routes_read_digit_to_the_tab(env: Env, tab: Any) -> None:
    samples = sample_digits()
    Routed = tuple[dict[str, Any], dict[str, Any], dict[str, Any]]

    async def calls() -> list[Routed]:
        async with Fleet(env.broker_url, fleet=env.fleet) as fleet:
            await until_routed_to_the_tab(fleet)
            out = []
            for _, pixels in samples:
                got, route = await fleet.call_skill(
                    "read_digit", {"pixels": pixels}, where={"kind": "browser"}, explain=True
                )
                meter = await fleet.call("meter-py", "read_digit", {"pixels": pixels})
                out.append((got, route, meter))
            return out

    results = in_thread(calls)
    assert results[0][0]["digit"] == 3
    for (name, pixels), (got, route, meter) in zip(samples, results, strict=True):
        digit, confidence = python_answer(pixels)
        assert got["digit"] == digit == meter["digit"], name
        assert got["confidence"] == pytest.approx(confidence, abs=2e-4), name
        (decision,) = route["decisions"]
        assert decision["chosen"] == "tab-1"
        assert decision["rejected"] == {"meter-py": "tags kind=meter≠browser"}
        assert [(a["device"], a["outcome"]) for a in route["attempts"]] == [("tab-1", "ok")]


def test_bad_input_and_unknown_skills_get_typed_errors(env: Env, tab: Any) -> None:
    async def calls() -> tuple[str, str, str]:
        async with Fleet(env.broker_url, fleet=env.fleet) as fleet:
            await until_routed_to_the_tab(fleet)
            with pytest.raises(BadRequest) as routed:
                await fleet.call_skill(
                    "read_digit", {"pixels": [1.0] * 63}, where={"kind": "browser"}
                )
            with pytest.raises(BadRequest) as direct:
                await fleet.call("tab-1", "read_digit", {"pixels": ["ink"] * 64})
            with pytest.raises(NotFound) as unknown:
                await fleet.call("tab-1", "fly", {})
            return str(routed.value), str(direct.value), str(unknown.value)

    routed, direct, unknown = in_thread(calls)
    assert "pixels: List should have at least 64 items" in routed
    assert "pixels.0: Input should be a valid number" in direct
    assert "device 'tab-1' has no skill 'fly' (skills: read_digit)" in unknown


class Requester:
    """A raw paho MQTT 5 client: publishes requests with properties, keeps the replies."""

    def __init__(self, url: str, reply_topic: str) -> None:
        self.reply_topic = reply_topic
        self.replies: list[tuple[bytes, Any]] = []
        self._cond = threading.Condition()
        self._client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5
        )
        self._client.on_message = self._on_message
        subscribed = threading.Event()
        self._client.on_subscribe = lambda *_: subscribed.set()
        self._client.on_connect = lambda c, *_: c.subscribe(reply_topic, qos=0)
        self._client.connect("127.0.0.1", port_of(url))
        self._client.loop_start()
        assert subscribed.wait(10), "no SUBACK"

    def _on_message(self, _c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        with self._cond:
            self.replies.append((bytes(msg.payload), msg.properties))
            self._cond.notify_all()

    def request(self, topic: str, payload: bytes, **props: Any) -> None:
        p = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        for name, value in props.items():
            setattr(p, name, value)
        self._client.publish(topic, payload, qos=1, properties=p).wait_for_publish(5)

    def wait(self, n: int, timeout: float = 10.0) -> list[tuple[bytes, Any]]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.replies) < n:
                left = deadline - time.monotonic()
                assert left > 0, f"{len(self.replies)} replies of {n}: {self.replies}"
                self._cond.wait(left)
            return list(self.replies)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def test_the_wire_details_of_a_call(env: Env, tab: Any) -> None:
    call = f"edgeagent/{env.fleet}/dev/tab-1/call"
    three = json.dumps({"pixels": DIGIT_THREE}).encode()
    calls_before = tab.evaluate("window.edgeDevice.slots.get('read_digit').calls")
    rr = Requester(env.broker_url, f"t/{env.fleet}/reply")
    try:
        rr.request(f"{call}/read_digit", three, ResponseTopic=rr.reply_topic,
                   CorrelationData=b"\x00\xffreq-7", UserProperty=[("trace", "abc")],
                   MessageExpiryInterval=5)  # fmt: skip
        rr.request(f"{call}/_ping", b"", ResponseTopic=rr.reply_topic, CorrelationData=b"ping")
        rr.request(f"{call}/read_digit", b"\x01\x02", ResponseTopic=rr.reply_topic,
                   CorrelationData=b"bin", ContentType="application/octet-stream")  # fmt: skip
        rr.request(f"{call}/read_digit", three)  # no response topic: dropped, unanswered
        for n in (1, 2):  # the same key twice: one run, the second answered from the first
            rr.request(f"{call}/read_digit", three, ResponseTopic=rr.reply_topic,
                       CorrelationData=b"idem-%d" % n, UserProperty=[("idem", "k-1")])  # fmt: skip
        got = rr.wait(5)
    finally:
        rr.close()
    by_corr = {bytes(props.CorrelationData): (payload, props) for payload, props in got}
    payload, props = by_corr[b"\x00\xffreq-7"]
    assert props.ContentType == "application/json"
    assert ("trace", "abc") in props.UserProperty
    assert decode_reply(payload).model_dump(exclude_none=True) == {
        "type": "ok",
        "output": {
            "digit": 3,
            "confidence": pytest.approx(python_answer(DIGIT_THREE)[1], abs=2e-4),
        },
    }
    ping = decode_reply(by_corr[b"ping"][0])
    assert ping.type == "ok"
    assert ping.output["device"] == "tab-1"
    assert ping.output["skills"] == 1
    binary = decode_reply(by_corr[b"bin"][0])
    assert binary.type == "error"
    assert binary.code == "bad_request"
    assert binary.message == "skill 'read_digit' takes no binary input; send JSON"
    assert by_corr[b"idem-1"][0] == by_corr[b"idem-2"][0] == payload
    # Two runs (the traced call and the first keyed one); the repeat and the unanswered one not.
    calls_after = tab.evaluate("window.edgeDevice.slots.get('read_digit').calls")
    assert calls_after - calls_before == 2
    counters = tab.evaluate("window.edgeDevice.counters")
    assert counters["dropped"] >= 1


def test_drawing_on_the_pad_reads_the_digit(env: Env, tab: Any) -> None:
    tab.click("#clear")
    box = tab.locator("#pad").bounding_box()
    assert box is not None
    x, top, w, h = box["x"], box["y"], box["width"], box["height"]
    # A "7": the top bar, then the stroke down to the left.
    tab.mouse.move(x + 0.25 * w, top + 0.2 * h)
    tab.mouse.down()
    for i in range(1, 11):
        tab.mouse.move(x + (0.25 + 0.05 * i) * w, top + 0.2 * h)
    for i in range(1, 13):
        tab.mouse.move(x + (0.75 - 0.025 * i) * w, top + (0.2 + 0.055 * i) * h)
    tab.mouse.up()
    tab.wait_for_selector("#answer[data-digit]", timeout=10_000)
    shown = int(tab.get_attribute("#answer", "data-digit"))
    grid = json.loads(tab.get_attribute("#grid", "data-pixels"))
    assert len(grid) == 64
    assert sum(grid) > 0
    assert max(grid) <= 16
    assert shown == python_answer(grid)[0]
    assert shown == 7


def test_closing_the_page_leaves_the_last_will(env: Env) -> None:
    state = f"edgeagent/{env.fleet}/dev/tab-2/state"
    page = open_device(env, "tab-2", served=True)  # broker and fleet from /config.json
    watch = Retained(env.broker_url, state)
    try:
        watch.wait_for(state, "status", "online")
        page.close()
        gone = StateMessage.model_validate(watch.wait_for(state, "status", "offline"))
    finally:
        watch.close()
    assert gone.reason == "connection lost"
    assert gone.ts is None


def test_leaving_the_fleet_drains_then_says_offline(env: Env) -> None:
    state = f"edgeagent/{env.fleet}/dev/tab-3/state"
    page = open_device(env, "tab-3")
    watch = Retained(env.broker_url, state)
    try:
        watch.wait_for(state, "status", "online")
        page.click("#leave")
        gone = StateMessage.model_validate(watch.wait_for(state, "status", "offline"))
        statuses = [json.loads(p)["status"] for _, p in watch.history]
    finally:
        watch.close()
        page.close()
    assert gone.reason == "stopped"
    assert statuses[-2:] == ["draining", "offline"]


def test_the_tab_announces_itself_again_after_the_broker_restarts(env: Env, tab: Any) -> None:
    base = f"edgeagent/{env.fleet}/dev/tab-1"
    env.broker.restart()  # no persistence: every retained message is gone
    watch = Retained(env.broker_url, f"{base}/#")
    try:
        watch.wait_for(f"{base}/state", "status", "online", timeout=20)
        watch.wait_for(f"{base}/manifest", "type", "manifest")
    finally:
        watch.close()

    async def call() -> dict[str, Any]:
        async with Fleet(env.broker_url, fleet=env.fleet) as fleet:
            for _ in range(100):  # until the coordinator is back and knows the tab again
                try:
                    out: dict[str, Any] = await fleet.call_skill(
                        "read_digit", {"pixels": DIGIT_THREE}, where={"kind": "browser"},
                        timeout=2,
                    )  # fmt: skip
                    return out
                except CallError:
                    await asyncio.sleep(0.2)
            raise AssertionError("the coordinator never routed to the tab again")

    assert in_thread(call)["digit"] == 3
