"""The web dashboard's page in a real headless chromium against a real mosquitto (MQTT over
WebSockets) and real agent processes; the server alone is tests/test_dashboard_server.py.

With EDGEAGENT_SCREENSHOTS=1 the tests also write docs/img/dashboard-{fleet,call,error}.png.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import BaseModel, Field

from edgeagent import Fleet
from edgeagent.bridges.dashboard import DashboardServer
from edgeagent.bridges.dashboard_config import PageConfig
from edgeagent.demo import DIGIT_THREE
from edgeagent.localbroker import Mosquitto
from tests.agents import EXAMPLES, port_of, running_agent
from tests.web_helpers import browser, console_errors  # noqa: F401 (the fixture)

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "docs" / "img"


@dataclass
class LiveFleet:
    broker: Mosquitto
    fleet: str
    url: str  # the dashboard's
    procs: dict[str, subprocess.Popen[bytes]]


def _fast_health_config(folder: Path, name: str) -> str:
    """The example config with a health message every second (sparklines fill quickly)."""
    text = (EXAMPLES / name).read_text()
    path = folder / name
    path.write_text(text + "\nhealth_interval_s: 1\n")
    return str(path)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveFleet]:
    folder = tmp_path_factory.mktemp("dash-fleet")
    fleet = f"t{uuid.uuid4().hex[:10]}"
    with ExitStack() as stack:
        broker = stack.enter_context(Mosquitto(websockets=True))
        procs = {}
        for device, cfg in (("lamp-kitchen", "lamp-kitchen.yaml"),
                            ("thermostat-living", "thermostat-living.yaml")):  # fmt: skip
            config = _fast_health_config(folder, cfg)
            procs[device] = stack.enter_context(running_agent(config, broker.url, fleet, device))
        assert broker.ws_url is not None
        page = PageConfig(ws_url=broker.ws_url, fleet=fleet, root="edgeagent", report=False)
        server = stack.enter_context(DashboardServer(page, port=0))
        yield LiveFleet(broker, fleet, server.url, procs)


@pytest.fixture(scope="module")
def page(browser: Browser, live: LiveFleet) -> Iterator[Page]:  # noqa: F811 (the fixture)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    p = context.new_page()
    errors = console_errors(p)
    p.goto(live.url)
    p.wait_for_selector("#conn[data-state=connected]", timeout=10_000)
    yield p
    context.close()
    assert errors == [], errors


def shoot(page: Page, name: str) -> None:
    if os.environ.get("EDGEAGENT_SCREENSHOTS"):
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"dashboard-{name}.png"), full_page=True)


def status_of(page: Page, device: str) -> Any:
    return page.locator(f'tr[data-device="{device}"] .status')


def fleet_call(live: LiveFleet, device: str, skill: str, arg: object = None) -> Any:
    async def go() -> Any:
        async with Fleet(live.broker.url, fleet=live.fleet) as f:
            return await f.call(device, skill, arg, timeout=5)

    # Playwright's sync API keeps an event loop in this thread: run ours in another one.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, go()).result(15)


def test_page_lists_the_fleet_with_health(page: Page) -> None:
    from playwright.sync_api import expect

    for device in ("lamp-kitchen", "thermostat-living"):
        expect(status_of(page, device)).to_have_text("online")
    row = page.locator('tr[data-device="lamp-kitchen"]')
    expect(row.locator(".profile")).to_have_text("pi-zero-2w")
    expect(row.locator(".tags")).to_contain_text("room=kitchen")
    # Sparklines draw once two Health messages (1 s apart) arrived.
    expect(row.locator('svg[data-series="queue depth"] polyline')).to_have_count(1, timeout=8000)


def test_call_from_the_form_changes_the_lamp(page: Page, live: LiveFleet) -> None:
    from playwright.sync_api import expect

    page.click('tr[data-device="lamp-kitchen"] button.select')
    card = page.locator('section.skill[data-skill="set_brightness"]')
    card.locator('input[name="level"]').fill("37")
    card.locator("button.call").click()
    reply = card.locator('.reply[data-type="ok"]').first
    expect(reply.locator("pre.output")).to_contain_text('"brightness": 37')
    assert fleet_call(live, "lamp-kitchen", "get_state") == {"on": True, "brightness": 37}
    # The lamp's `changed` event streams into the page.
    expect(page.locator('#events li[data-device="lamp-kitchen"][data-event="changed"]').first
           ).to_contain_text('"brightness":37')  # fmt: skip
    shoot(page, "call")


def test_form_checks_bounds_and_raw_json_gets_the_typed_error(page: Page, live: LiveFleet) -> None:
    from playwright.sync_api import expect

    page.click('tr[data-device="lamp-kitchen"] button.select')
    card = page.locator('section.skill[data-skill="set_brightness"]')
    replies_before = card.locator(".reply").count()
    card.locator('input[name="level"]').fill("500")
    card.locator("button.call").click()
    expect(card.locator(".form-errors li")).to_have_text("level: at most 100")
    assert card.locator(".reply").count() == replies_before  # nothing was sent
    card.locator("details.raw summary").click()
    card.locator("textarea.raw").fill('{"level": 500}')
    card.locator("button.send-raw").click()
    error = card.locator('.reply[data-type="error"]').first
    expect(error.locator(".code")).to_have_text("bad_request")
    expect(error.locator(".message")).to_contain_text("level")
    assert fleet_call(live, "lamp-kitchen", "get_state")["brightness"] != 500
    shoot(page, "error")


def test_broker_text_is_never_html(page: Page, live: LiveFleet) -> None:
    from playwright.sync_api import expect

    evil = '<img src=x id="pwned" onerror="window.pwned=1">'
    manifest = {
        "type": "manifest", "device": "evil-1", "fleet": live.fleet, "profile": evil,
        "tags": {"room": evil}, "max_payload": 1000, "agent_version": evil,
        "skills": [{"name": "x", "description": evil, "side_effect": "read", "idempotent": True,
                    "input_schema": {"type": "object", "properties": {"a": {"type": "string",
                                     "title": evil}}},
                    "output_schema": {}, "max_concurrency": 1, "max_queue": 1, "timeout_s": 1}],
    }  # fmt: skip
    base = f"edgeagent/{live.fleet}/dev/evil-1"
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5
    )
    client.connect("127.0.0.1", port_of(live.broker.url))
    client.loop_start()
    try:
        client.publish(
            f"{base}/manifest", json.dumps(manifest), qos=1, retain=True
        ).wait_for_publish()
        state = {"type": "state", "device": "evil-1", "status": "online"}
        client.publish(f"{base}/state", json.dumps(state), qos=1, retain=True).wait_for_publish()
        expect(page.locator('tr[data-device="evil-1"] .profile')).to_have_text(evil)
        page.click('tr[data-device="evil-1"] button.select')
        expect(page.locator('section.skill[data-skill="x"] .label')).to_contain_text(evil)
        assert page.locator("#pwned").count() == 0
        assert page.evaluate("window.pwned === undefined")
    finally:
        for kind in ("manifest", "state"):  # clear: the device leaves the page
            client.publish(f"{base}/{kind}", b"", qos=1, retain=True).wait_for_publish()
        client.loop_stop()
        client.disconnect()
    expect(page.locator('tr[data-device="evil-1"]')).to_have_count(0)


class Window(BaseModel):
    start: int = Field(ge=0, le=23, description="First hour.")
    end: int = Field(ge=0, le=23)


class Plan(BaseModel):
    """A rich input, as pydantic writes its schema: $defs, an enum, an Optional, bounds."""

    name: str = Field(min_length=1, max_length=20)
    mode: Literal["eco", "comfort"] = "eco"
    celsius: float = Field(gt=5, lt=30)
    boost: bool = False
    note: str | None = None
    window: Window
    days: list[int] = Field(default_factory=list)


class Responder:
    """A device played by paho: announces ``skill`` with ``schema`` and answers each request
    (MQTT 5 Response Topic + Correlation Data) with ``{"type": "ok", "output": <the input>}``."""

    def __init__(
        self, url: str, fleet: str, device: str, skill: str, schema: dict[str, Any]
    ) -> None:
        self.base = f"edgeagent/{fleet}/dev/{device}"
        self.requests: list[tuple[bytes, Any]] = []
        self.client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5
        )
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port_of(url))
        self.client.loop_start()
        self.client.subscribe(f"{self.base}/call/+", qos=1)
        spec = {"name": skill, "side_effect": "actuate", "idempotent": True,
                "input_schema": schema, "output_schema": {}, "max_concurrency": 1,
                "max_queue": 1, "timeout_s": 2}  # fmt: skip
        manifest = {"type": "manifest", "device": device, "fleet": fleet, "skills": [spec],
                    "max_payload": 10000, "agent_version": "paho"}  # fmt: skip
        state = {"type": "state", "device": device, "status": "online"}
        self.publish("manifest", manifest)
        self.publish("state", state)

    def publish(self, kind: str, doc: object) -> None:
        payload = b"" if doc is None else json.dumps(doc).encode()
        self.client.publish(f"{self.base}/{kind}", payload, qos=1, retain=True).wait_for_publish()

    def _on_message(self, _c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        asked: Any = msg.properties
        self.requests.append((bytes(msg.payload), asked))
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.CorrelationData = asked.CorrelationData
        reply = {"type": "ok", "output": json.loads(msg.payload)}
        self.client.publish(asked.ResponseTopic, json.dumps(reply), qos=1, properties=props)

    def close(self) -> None:
        self.publish("manifest", None)
        self.publish("state", None)
        self.client.loop_stop()
        self.client.disconnect()


def test_form_from_a_rich_schema_sends_what_the_schema_accepts(page: Page, live: LiveFleet) -> None:
    from playwright.sync_api import expect

    device = Responder(live.broker.url, live.fleet, "rich-1", "plan", Plan.model_json_schema())
    try:
        page.click('tr[data-device="rich-1"] button.select')
        card = page.locator('section.skill[data-skill="plan"]')
        card.locator('input[name="celsius"]').fill("30")  # the bound is exclusive
        card.locator("button.call").click()
        expect(card.locator(".form-errors li")).to_have_text(
            ["name: required", "celsius: less than 30", "window.start: required",
             "window.end: required"]
        )  # fmt: skip
        assert device.requests == []
        card.locator('input[name="name"]').fill("morning")
        card.locator('select[name="mode"]').select_option(label='"comfort"')
        card.locator('input[name="celsius"]').fill("21.5")
        card.locator('input[name="boost"]').check()
        card.locator('input[name="window.start"]').fill("6")
        card.locator('input[name="window.end"]').fill("8")
        card.locator('textarea[name="days"]').fill("[1, 2]")
        card.locator("button.call").click()
        expect(card.locator('.reply[data-type="ok"] pre.output')).to_contain_text('"morning"')
        ((payload, props),) = device.requests
        sent = json.loads(payload)
        assert sent == {"name": "morning", "mode": "comfort", "celsius": 21.5, "boost": True,
                        "window": {"start": 6, "end": 8}, "days": [1, 2]}  # fmt: skip
        Plan.model_validate(sent)
        assert props.ContentType == "application/json"
        assert props.ResponseTopic.startswith(f"edgeagent/{live.fleet}/client/web-")
        assert len(props.CorrelationData) > 0
        assert props.MessageExpiryInterval >= 1
    finally:
        device.close()


def test_the_browser_tab_served_here_joins_and_answers_the_page(
    page: Page, live: LiveFleet
) -> None:
    """device.html (the browser-tab device) from this server, called from the dashboard."""
    from playwright.sync_api import expect

    tab = page.context.new_page()
    try:
        tab.goto(live.url + "device.html?device=tab-1&health=1")
        expect(status_of(page, "tab-1")).to_have_text("online", timeout=15_000)
        page.click('tr[data-device="tab-1"] button.select')
        card = page.locator('section.skill[data-skill="read_digit"]')
        card.locator('textarea[name="pixels"]').fill(json.dumps(DIGIT_THREE))
        card.locator("button.call").click()
        expect(card.locator('.reply[data-type="ok"] pre.output')).to_contain_text('"digit": 3')
    finally:
        tab.close()
    expect(status_of(page, "tab-1")).to_have_text("offline", timeout=10_000)


def test_killed_device_turns_offline(page: Page, live: LiveFleet) -> None:
    from playwright.sync_api import expect

    proc = live.procs["thermostat-living"]
    proc.kill()  # no goodbye: the broker publishes the last will
    proc.wait(5)
    expect(status_of(page, "thermostat-living")).to_have_text("offline", timeout=10_000)
    expect(status_of(page, "lamp-kitchen")).to_have_text("online")
    page.click('tr[data-device="lamp-kitchen"] button.select')
    shoot(page, "fleet")


def test_event_list_is_bounded(page: Page, live: LiveFleet) -> None:
    from playwright.sync_api import expect

    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5
    )
    client.connect("127.0.0.1", port_of(live.broker.url))
    client.loop_start()
    try:
        topic = f"edgeagent/{live.fleet}/dev/chatty-1/event/tick"
        for i in range(150):
            event = {"type": "event", "device": "chatty-1", "name": "tick", "ts": 1.0,
                     "data": {"i": i}}  # fmt: skip
            info = client.publish(topic, json.dumps(event), qos=1)
        info.wait_for_publish()
        expect(page.locator("#events li").first).to_contain_text('{"i":149}')
        assert page.locator("#events li").count() == 100
    finally:
        client.loop_stop()
        client.disconnect()


def test_unreachable_broker_is_said_and_the_report_linked(
    browser: Browser,  # noqa: F811 (the fixture)
    tmp_path: Path,
) -> None:
    from playwright.sync_api import expect

    (tmp_path / "report.html").write_text("<title>sim</title><h1>the last run</h1>")
    page_cfg = PageConfig(ws_url="ws://127.0.0.1:9", fleet="f", root="edgeagent", report=True)
    with DashboardServer(page_cfg, port=0, report_dir=tmp_path) as server:
        context = browser.new_context()
        try:
            p = context.new_page()
            p.goto(server.url)
            expect(p.locator("#conn")).to_have_attribute("data-state", "error", timeout=10_000)
            link = p.locator("#report a")
            expect(link).to_have_attribute("href", "/report/")
            p.goto(server.url + "report/")
            expect(p.locator("h1")).to_have_text("the last run")
        finally:
            context.close()
