// The browser tab as a device of the fleet: the I/O shell (MQTT.js over WebSockets, timers, the
// page). Decisions come from device-calls.js and device-core.js; this file only carries them
// out. docs/browser-device.md is the user's guide.

import {
  AGENT_VERSION,
  ConfigError,
  MAX_PAYLOAD,
  buildManifest,
  generatedId,
  healthMessage,
  okReply,
  pageOptions,
  stateMessage,
  withServedDefaults,
} from "./device-core.js";
import {
  IdempotencyCache,
  SkillSlot,
  decideCall,
  runBounded,
  startDecision,
} from "./device-calls.js";
import { READ_DIGIT_SPEC, loadDigitModel } from "./device-digits.js";
import { attachPad } from "./device-canvas.js";

const KEEPALIVE_S = 60; // a hidden tab's timers may run once a minute; the broker waits 1.5x
const RECONNECT_MS = 2000;
const LOG_LINES = 20;
const DRAIN_GRACE_MS = 5000;

const $ = (id) => document.getElementById(id);
const monotonic = () => performance.now() / 1000;
const decoder = new TextDecoder();

function show(id, text, cls) {
  const el = $(id);
  if (!el) return;
  el.textContent = text;
  if (cls !== undefined) el.className = cls;
}

function logLine(text) {
  const list = $("log");
  if (!list) return;
  const li = document.createElement("li");
  li.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  list.prepend(li);
  while (list.children.length > LOG_LINES) list.lastChild.remove();
}

function firstValues(userProperties) {
  const out = {};
  for (const [k, v] of Object.entries(userProperties || {})) out[k] = Array.isArray(v) ? v[0] : v;
  return out;
}

function replyProps(props, trace) {
  const out = { contentType: "application/json" };
  if (props.correlationData !== undefined) out.correlationData = props.correlationData;
  if (trace) out.userProperties = { trace };
  return out;
}

function sessionId() {
  const byte = () => crypto.getRandomValues(new Uint8Array(1))[0];
  try {
    const kept = sessionStorage.getItem("edgeagent-device-id");
    if (kept) return kept;
    const id = generatedId(byte);
    sessionStorage.setItem("edgeagent-device-id", id);
    return id;
  } catch {
    return generatedId(byte);
  }
}

/** One browser device: connects, announces, serves its skills, reports health. */
export class BrowserDevice {
  constructor(options, skills) {
    this.o = options;
    this.slots = new Map(skills.map(([spec, run]) => [spec.name, new SkillSlot(spec, run)]));
    this.idem = new IdempotencyCache();
    this.counters = { served: 0, failed: 0, dropped: 0 };
    this.draining = false;
    this.status = "connecting";
    this.started = monotonic();
    this.client = null;
    this.healthTimer = null;
  }

  start(mqtt) {
    const { topics, device } = this.o;
    const will = stateMessage(device, "offline", null, "connection lost");
    this.client = mqtt.connect(this.o.broker, {
      protocolVersion: 5,
      clientId: `ea-dev-${device}`,
      clean: true,
      keepalive: KEEPALIVE_S,
      reconnectPeriod: RECONNECT_MS,
      properties: { sessionExpiryInterval: 0 },
      will: { topic: topics.state(device), payload: JSON.stringify(will), qos: 1, retain: true },
    });
    this.client.on("connect", () => this.announce());
    this.client.on("message", (topic, payload, packet) => {
      try {
        this.onMessage(topic, payload, packet);
      } catch (err) {
        logLine(`message on ${topic} not handled: ${err}`); // keep serving the others
      }
    });
    this.client.on("close", () => this.setStatus(this.status === "offline" ? "offline" : "disconnected"));
    this.client.on("error", (err) => logLine(`broker: ${err.message}`));
    this.healthTimer = setInterval(() => this.publishHealth(), this.o.healthS * 1000);
  }

  setStatus(status) {
    this.status = status;
    show("status", status, `status ${status}`);
  }

  announce() {
    const { topics, device, fleet, tags } = this.o;
    const specs = [...this.slots.values()].map((s) => s.spec);
    const manifest = buildManifest({ device, fleet, tags, skills: specs });
    const status = this.draining ? "draining" : "online";
    this.client.subscribe(topics.callsFilter(device), { qos: 1 });
    this.client.publish(topics.manifest(device), JSON.stringify(manifest), { qos: 1, retain: true });
    this.publishState(status, undefined);
    this.setStatus(status);
    logLine(`${status} as ${device} in fleet ${fleet}`);
  }

  publishState(status, reason, done) {
    const msg = stateMessage(this.o.device, status, Date.now() / 1000, reason);
    const topic = this.o.topics.state(this.o.device);
    this.client.publish(topic, JSON.stringify(msg), { qos: 1, retain: true }, done);
  }

  publishHealth() {
    if (!this.client || !this.client.connected) return; // missed reports are never sent later
    const msg = healthMessage({
      device: this.o.device,
      ts: Date.now() / 1000,
      uptimeS: monotonic() - this.started,
      counters: this.counters,
      slots: this.slots,
    });
    this.client.publish(this.o.topics.health(this.o.device), JSON.stringify(msg), { qos: 0 });
  }

  reply(topic, props, reply) {
    if (reply.type === "error") this.counters.failed += 1;
    const payload = typeof reply === "string" ? reply : JSON.stringify(reply);
    this.client.publish(topic, payload, { qos: 0, properties: props });
    return payload;
  }

  onMessage(topic, payload, packet) {
    const prefix = this.o.topics.callPrefix(this.o.device);
    if (!topic.startsWith(prefix)) return;
    const props = packet.properties || {};
    const userProps = firstValues(props.userProperties);
    const rprops = replyProps(props, userProps.trace);
    const req = {
      skill: topic.slice(prefix.length),
      payload,
      responseTopic: props.responseTopic,
      contentType: props.contentType,
      userProps,
      expiryS: props.messageExpiryInterval,
      waiter: [props.responseTopic, rprops],
    };
    const state = {
      device: this.o.device,
      draining: this.draining,
      maxPayload: MAX_PAYLOAD,
      slots: this.slots,
      idem: this.idem,
      now: monotonic(),
    };
    const d = decideCall(req, state);
    if (d.kind === "drop") {
      this.counters.dropped += 1;
      logLine(`call to ${req.skill} dropped: ${d.reason}`);
    } else if (d.kind === "refuse") {
      this.reply(req.responseTopic, rprops, d.reply);
      logLine(`${req.skill} -> ${d.code}: ${d.message}`);
    } else if (d.kind === "replay") {
      this.client.publish(req.responseTopic, d.payload, { qos: 0, properties: rprops });
    } else if (d.kind === "ping") {
      this.reply(req.responseTopic, rprops, okReply(this.pingOutput()));
    } else if (d.kind === "run") {
      this.runCall(d, req.responseTopic, rprops).catch((err) => logLine(`call failed: ${err}`));
    }
  }

  pingOutput() {
    return {
      device: this.o.device,
      agent_version: AGENT_VERSION,
      uptime_s: Math.round((monotonic() - this.started) * 1000) / 1000,
      skills: this.slots.size,
    };
  }

  async runCall(d, replyTo, rprops) {
    const { slot } = d;
    await slot.acquire();
    slot.queued -= 1;
    const start = startDecision(slot.spec.timeout_s, d.deadline, monotonic());
    if (start.kind === "drop") {
      this.counters.dropped += 1;
      slot.release();
      if (d.key !== null) this.idem.finish(d.key, null);
      logLine(`call to ${slot.spec.name} ${start.reason}; dropped`);
      this.drained();
      return;
    }
    slot.inFlight += 1;
    const t0 = performance.now();
    const reply = await runBounded(slot, d.value, start.budgetS, () => this.drained());
    slot.addLatency(performance.now() - t0);
    slot.calls += 1;
    if (reply.type === "error") slot.errors += 1;
    else this.counters.served += 1;
    const sent = this.reply(replyTo, rprops, reply);
    if (d.key !== null) {
      for (const [topic, props] of this.idem.finish(d.key, sent)) {
        this.client.publish(topic, sent, { qos: 0, properties: props });
      }
    }
    logLine(`${slot.spec.name} -> ${sent.slice(0, 80)}`);
  }

  busy() {
    let n = 0;
    for (const s of this.slots.values()) n += s.inFlight + s.queued;
    return n;
  }

  drained() {
    if (this.draining && this.busy() === 0 && this.onIdle) this.onIdle();
  }

  /** Leave the fleet: draining (new calls `unavailable`), then offline, then a clean disconnect. */
  async stop() {
    if (this.draining || !this.client) return;
    this.draining = true;
    this.setStatus("draining");
    this.publishState("draining", "shutting down");
    if (this.busy() > 0) {
      await new Promise((resolve) => {
        this.onIdle = resolve;
        setTimeout(resolve, DRAIN_GRACE_MS);
      });
    }
    clearInterval(this.healthTimer);
    await new Promise((resolve) => this.publishState("offline", "stopped", resolve));
    await new Promise((resolve) => this.client.end(false, {}, resolve));
    this.setStatus("offline");
    logLine("left the fleet");
  }
}

function drawGrid(grid) {
  const el = $("grid");
  if (!el) return;
  el.dataset.pixels = JSON.stringify(grid);
  el.replaceChildren(
    ...grid.map((v) => {
      const cell = document.createElement("span");
      cell.style.background = `rgb(${255 - v * 15},${255 - v * 15},${255 - v * 15})`;
      return cell;
    }),
  );
}

/** The dashboard's /config.json, or null when the page is served without one. */
async function servedConfig() {
  try {
    const res = await fetch("config.json", { cache: "no-store" });
    return res.ok ? await res.json() : null;
  } catch {
    return null;
  }
}

async function main() {
  let options;
  try {
    const params = withServedDefaults(new URLSearchParams(location.search), await servedConfig());
    options = pageOptions(params, location, sessionId);
  } catch (err) {
    show("status", err instanceof ConfigError ? err.message : String(err), "status error");
    return;
  }
  show("device", options.device);
  show("fleet", `${options.fleet} on ${options.broker}`);
  ort.env.wasm.wasmPaths = new URL("vendor/onnxruntime-web/", location.href).href;
  ort.env.wasm.numThreads = 1;
  let readDigit;
  try {
    readDigit = await loadDigitModel(ort, options.modelUrl);
  } catch (err) {
    show("status", `model ${options.modelUrl} did not load: ${err.message}`, "status error");
    return;
  }
  const device = new BrowserDevice(options, [[READ_DIGIT_SPEC, (input) => readDigit(input.pixels)]]);
  window.edgeDevice = device;
  device.start(mqtt);
  const clearPad = attachPad($("pad"), async (grid) => {
    drawGrid(grid);
    const out = await readDigit(grid);
    const answer = $("answer");
    answer.dataset.digit = String(out.digit);
    answer.textContent = `${out.digit} (confidence ${out.confidence.toFixed(2)})`;
  });
  $("clear").addEventListener("click", () => {
    clearPad();
    drawGrid(new Array(64).fill(0));
    show("answer", "draw a digit");
    delete $("answer").dataset.digit;
  });
  $("leave").addEventListener("click", () => device.stop());
}

main();
