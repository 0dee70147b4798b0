"""The browser device's pure core (bridges/web/device-*.js), run in a real headless chromium.

No broker: the decisions the page makes for each request (admission in the protocol's order,
idempotency, deadlines, the bounded queue, timeouts), its page options, the drawing's 8x8 grid
and the JSON Schema checks are imported as ES modules into a page and checked against the
texts and codes the Python agent uses (agent/admission.py, agent/idempotency.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from tests.browser_device_helpers import chromium, needs_chromium, static_site

pytest.importorskip("playwright.sync_api")

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def site() -> Iterator[tuple[str, Any]]:
    with static_site() as web, chromium() as browser:
        yield web, browser


def test_the_pure_core_decides_as_the_python_agent(site: tuple[str, Any]) -> None:
    web, browser = site
    page = browser.new_page()
    try:
        page.goto(f"{web}/vendor/README.md")  # any page of the origin: modules import from it
        out = page.evaluate(CORE_CHECKS)
    finally:
        page.close()
    assert out["noReply"] == out["wildReply"] == "drop"
    assert out["badHop"] == "bad_request: user property 'hop' must be a whole number from 0 to 64"
    assert out["draining"] == "unavailable: device is shutting down"
    assert (
        out["tooBig"]
        == "bad_request: payload of 1001 bytes exceeds this device's limit of 1000 bytes"
    )
    assert out["ping"] == "ping"
    assert out["unknown"] == "not_found: device 'd' has no skill 'fly' (skills: read_digit)"
    assert out["notJson"].startswith("bad_request: invalid input: (body): Invalid JSON")
    assert (
        out["notObject"] == "bad_request: invalid input: (body): Input should be a valid dictionary"
    )
    assert out["binary"] == "bad_request: skill 'read_digit' takes no binary input; send JSON"
    assert out["schema"] == (
        "bad_request: invalid input: pixels: List should have at least 64 items after "
        "validation, not 2; pixels.1: Input should be a valid number"
    )
    assert out["capacity"] == [
        "run", 52, None,
        "busy: skill 'read_digit' is at capacity (1 running, 1 queued); retry later or elsewhere",
        1, 2,
    ]  # fmt: skip
    assert out["busyFirst"].startswith("busy:")
    assert out["idemFirst"] == ["run", True]
    assert out["idemWait"] == "wait"
    assert out["idemWaitFull"] == "busy: too many repeats of a call still running"
    assert out["idemOther"].startswith("bad_request: idempotency key 'a' was used for a call to")
    assert out["idemWaiters"] == ["w"]
    assert out["idemReplay"] == {"kind": "replay", "payload": '{"type":"ok"}'}
    assert out["idemOtherCaller"] == "run"
    assert out["idemLong"] == "bad_request: idempotency key of 129 characters: use 1 to 128"
    assert out["evicted"] is False
    assert out["start"] == [
        {"kind": "run", "budgetS": 10},
        {"kind": "run", "budgetS": 2},
        {"kind": "drop", "reason": "expired while queued"},
    ]
    assert out["output"][0] is None
    assert out["output"][1]["code"] == "internal"
    assert "digit: Input should be less than or equal to 9" in out["output"][1]["message"]
    assert out["fifo"] == [[1, 2], 0]
    assert out["health"] == {"calls": 0, "errors": 0, "rejected": 0, "in_flight": 0,
                             "queued": 0, "p50_ms": 50, "p95_ms": 95, "model": "digits",
                             "model_version": "1"}  # fmt: skip
    default, bad_id, full, bad_broker, bad_health = out["options"]
    assert default == {"device": "browser-00ff", "broker": "ws://h:9001", "fleet": "default",
                       "tags": {"kind": "browser"}, "healthS": 10}  # fmt: skip
    assert bad_id.startswith('ConfigError: invalid device id "a/b"')
    assert full == {"device": "browser-00ff", "broker": "ws://b:1", "fleet": "home",
                    "tags": {"kind": "browser", "room": "x"}, "healthS": 2}  # fmt: skip
    assert bad_broker.startswith("ConfigError: broker")
    assert bad_health.startswith("ConfigError: health")
    assert out["generated"] == "browser-abab"
    assert out["served"] == ["fleet=f&broker=ws%3A%2F%2Fd%3A9&root=acme", "device=x"]
    bar = np.array(out["grid"]).reshape(8, 8)
    assert bar[:, 3:5].min() > 0
    assert bar[:, :2].max() == 0
    assert bar[:, 6:].max() == 0
    assert out["empty"] == [0] * 64
    assert out["best"] == {"digit": 2, "confidence": 0.4706}
    timeout = {
        "type": "error",
        "code": "timeout",
        "message": "skill 'read_digit' took longer than 0.030 s",
    }
    # [holders, in flight, freed]: the cut-off run held its slot until it returned.
    assert out["timeout"] == [timeout, [1, 1, 0], [0, 0, 1]]
    assert out["internal"] == [
        {"type": "error", "code": "internal", "message": "TypeError: bad"},
        0,
    ]
    assert out["ok"] == [{"type": "ok", "output": {"digit": 4, "confidence": 1}}, 0]
    assert out["schema2"] == [
        None,
        'm: Input should be "a" or "b"; n: Input matches none of the allowed forms; '
        "x: Extra inputs are not permitted",
        "m: Field required",
    ]


CORE_CHECKS = """async () => {
  const calls = await import('/device-calls.js');
  const core = await import('/device-core.js');
  const digits = await import('/device-digits.js');
  const canvas = await import('/device-canvas.js');
  const enc = (o) => new TextEncoder().encode(typeof o === 'string' ? o : JSON.stringify(o));
  const spec = {...digits.READ_DIGIT_SPEC, max_concurrency: 1, max_queue: 1};
  const state = (over = {}) => ({device: 'd', draining: false, maxPayload: 1000,
    slots: new Map([[spec.name, new calls.SkillSlot(spec, null)]]),
    idem: new calls.IdempotencyCache(2, 1), now: 50, ...over});
  const zeros = {pixels: new Array(64).fill(0)};
  const req = (over = {}) => ({skill: 'read_digit', payload: enc(zeros), responseTopic: 'r/1',
    contentType: undefined, userProps: {}, expiryS: undefined, waiter: 'w', ...over});
  const kind = (d) => d.kind === 'refuse' ? `${d.code}: ${d.message}` : d.kind;
  const one = (over, st) => kind(calls.decideCall(req(over), st || state()));
  const out = {};
  out.noReply = one({responseTopic: undefined});
  out.wildReply = one({responseTopic: 'a/+'});
  out.badHop = one({userProps: {hop: '65'}});
  out.draining = one({}, state({draining: true}));
  out.tooBig = one({payload: new Uint8Array(1001)});
  out.ping = one({skill: '_ping'});
  out.unknown = one({skill: 'fly'});
  out.notJson = one({payload: enc('{')});
  out.notObject = one({payload: enc('[1]')});
  out.binary = one({contentType: 'application/octet-stream'});
  out.schema = one({payload: enc({pixels: [1, 'a'], extra: 2})});
  const s = state();
  const run1 = calls.decideCall(req({expiryS: 2}), s);
  const run2 = calls.decideCall(req(), s);
  const full = calls.decideCall(req(), s);
  const slot = s.slots.get('read_digit');
  out.capacity = [run1.kind, run1.deadline, run2.deadline, kind(full), slot.rejected, slot.queued];
  out.busyFirst = one({payload: enc('{')}, s);
  const i = state();
  const k = (key, fill, caller) => req({userProps: {idem: key, caller},
                                        payload: enc({pixels: new Array(64).fill(fill)})});
  const first = calls.decideCall(k('a', 1), i);
  out.idemFirst = [first.kind, first.key !== null];
  out.idemWait = kind(calls.decideCall(k('a', 1), i));
  out.idemWaitFull = kind(calls.decideCall(k('a', 1), i));
  out.idemOther = kind(calls.decideCall(k('a', 2), i));
  out.idemWaiters = i.idem.finish(first.key, '{"type":"ok"}');
  out.idemReplay = calls.decideCall(k('a', 1), i);
  out.idemOtherCaller = kind(calls.decideCall(k('a', 2, 'someone'), i));
  out.idemLong = kind(calls.decideCall(k('x'.repeat(129), 1), i));
  i.idem.start('k3', 'x');
  out.evicted = i.idem.entries.has(first.key);
  out.start = [calls.startDecision(10, null, 5), calls.startDecision(10, 7, 5),
               calls.startDecision(10, 7, 7)];
  out.output = [calls.outputProblem(spec, {digit: 3, confidence: 0.5}),
                calls.outputProblem(spec, {digit: 12, confidence: 0.5})];
  const fifo = new calls.SkillSlot(spec, null);
  const order = [];
  await fifo.acquire();
  const p1 = fifo.acquire().then(() => order.push(1));
  const p2 = fifo.acquire().then(() => order.push(2));
  fifo.release(); await p1; fifo.release(); await p2; fifo.release();
  out.fifo = [order, fifo.holders];
  for (let ms = 1; ms <= 100; ms += 1) fifo.addLatency(ms);
  out.health = fifo.health();
  const opt = (q) => {
    try {
      const o = core.pageOptions(new URLSearchParams(q), {hostname: 'h'}, () => 'browser-00ff');
      return {device: o.device, broker: o.broker, fleet: o.fleet, tags: o.tags, healthS: o.healthS};
    } catch (e) { return `${e.name}: ${e.message}`; }
  };
  out.options = [opt(''), opt('device=a/b'),
                 opt('tags=room=x,kind=lamp&fleet=home&broker=ws://b:1&health=2'),
                 opt('broker=http://x'), opt('health=0')];
  out.generated = core.generatedId(() => 171);
  const served = {ws_url: 'ws://d:9', fleet: 'home', root: 'acme'};
  out.served = [core.withServedDefaults(new URLSearchParams('fleet=f'), served).toString(),
                core.withServedDefaults(new URLSearchParams('device=x'), null).toString()];
  const w = 40, h = 40, ink = new Float32Array(w * h);
  for (let y = 5; y < 35; y += 1) for (let x = 18; x < 22; x += 1) ink[y * w + x] = 1;
  out.grid = canvas.toGrid(ink, w, h);
  out.empty = canvas.toGrid(new Float32Array(16), 4, 4);
  out.best = digits.bestDigit([0, 0, Math.log(8), 0, 0, 0, 0, 0, 0, 0]);
  const later = (ms, v) => new Promise((r) => setTimeout(() => r(v), ms));
  const slow = new calls.SkillSlot(spec, () => later(150, {digit: 1, confidence: 0.5}));
  await slow.acquire();
  slow.inFlight = 1;
  let freed = 0;
  const cut = await calls.runBounded(slow, {}, 0.03, () => { freed += 1; });
  const whileRunning = [slow.holders, slow.inFlight, freed];
  await later(250);
  out.timeout = [cut, whileRunning, [slow.holders, slow.inFlight, freed]];
  const boom = new calls.SkillSlot(spec, () => { throw new TypeError('bad'); });
  await boom.acquire();
  boom.inFlight = 1;
  out.internal = [await calls.runBounded(boom, {}, 1), boom.holders + boom.inFlight];
  const fine = new calls.SkillSlot(spec, async () => ({digit: 4, confidence: 1}));
  await fine.acquire();
  fine.inFlight = 1;
  out.ok = [await calls.runBounded(fine, {}, 1), fine.holders + fine.inFlight];
  const schema = await import('/device-schema.js');
  const s2 = {type: 'object', additionalProperties: false, required: ['m'],
    properties: {m: {$ref: '#/$defs/M'}, n: {anyOf: [{type: 'integer'}, {type: 'null'}]}},
    $defs: {M: {enum: ['a', 'b']}}};
  out.schema2 = [schema.summarize(s2, {m: 'a', n: null}),
                 schema.summarize(s2, {m: 'c', n: 1.5, x: 1}), schema.summarize(s2, {})];
  return out;
}"""
