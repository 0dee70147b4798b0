// The browser device's wire protocol: names, topics, page options and the messages it
// publishes (pure: no I/O, time and randomness passed in). agent/protocol.py is the source of
// truth; docs/protocol.md its prose; docs/browser-device.md what this page does with it.

export const PROTOCOL_VERSION = 1;
export const DEFAULT_ROOT = "edgeagent";
export const DEFAULT_FLEET = "default";
export const AGENT_VERSION = "browser/1";
/** Largest request payload accepted, bytes (announced in the manifest). */
export const MAX_PAYLOAD = 65536;
export const DEFAULT_HEALTH_S = 10;
/** Relative to the page: /models/digits.onnx when the page is /device.html. */
export const DEFAULT_MODEL_URL = "models/digits.onnx";
/** The ws listener the dashboard's generated mosquitto config opens, when none is given. */
export const DEFAULT_WS_PORT = 9001;
const MAX_TAGS = 16;

const NAME_RE = /^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$/;

/** Bad page options (a query parameter): shown on the page; the device does not start. */
export class ConfigError extends Error {
  constructor(message) {
    super(message);
    this.name = "ConfigError";
  }
}

export function checkName(value, what) {
  if (typeof value !== "string" || !NAME_RE.test(value)) {
    throw new ConfigError(
      `invalid ${what} ${JSON.stringify(value)}: use 1-128 letters, digits, '_', '.', '-' ` +
        "(no '/', '+', '#' or spaces), starting with a letter, digit or '_'",
    );
  }
  return value;
}

/** True if `topic` can be published to: not empty, no wildcards, no NUL. */
export function validPublishTopic(topic) {
  return typeof topic === "string" && topic.length > 0 && !/[+#\u0000]/.test(topic);
}

/** The topic tree of one root and fleet (agent/protocol.py's Topics). */
export class Topics {
  constructor(root = DEFAULT_ROOT, fleet = DEFAULT_FLEET) {
    for (const part of root.split("/")) checkName(part, "topic root level");
    checkName(fleet, "fleet name");
    this.root = root;
    this.fleet = fleet;
    this.base = `${root}/${fleet}`;
  }

  state(device) {
    return `${this.base}/dev/${device}/state`;
  }

  manifest(device) {
    return `${this.base}/dev/${device}/manifest`;
  }

  health(device) {
    return `${this.base}/dev/${device}/health`;
  }

  callPrefix(device) {
    return `${this.base}/dev/${device}/call/`;
  }

  callsFilter(device) {
    return `${this.base}/dev/${device}/call/+`;
  }
}

/** "room=office,owner=ann" -> {room: "office", owner: "ann"}; `kind` is always "browser". */
export function parseTags(text) {
  const tags = { kind: "browser" };
  const items = (text || "").split(",").filter((s) => s.trim() !== "");
  if (items.length > MAX_TAGS) throw new ConfigError(`at most ${MAX_TAGS} tags`);
  for (const item of items) {
    const eq = item.indexOf("=");
    if (eq <= 0) throw new ConfigError(`tag ${JSON.stringify(item)}: write key=value`);
    const key = checkName(item.slice(0, eq).trim(), "tag name");
    const value = item.slice(eq + 1).trim();
    if (value.length === 0 || value.length > 128) {
      throw new ConfigError(`tag ${key}: the value must have 1 to 128 characters`);
    }
    if (key !== "kind") tags[key] = value;
  }
  return tags;
}

/** A generated device id, browser- and 4 hex digits, from `randomByte()` (0..255). */
export function generatedId(randomByte) {
  const hex = [randomByte(), randomByte()].map((b) => b.toString(16).padStart(2, "0"));
  return `browser-${hex.join("")}`;
}

/**
 * The query parameters with the dashboard's /config.json ({ws_url, fleet, root}) filling the
 * ones the address leaves out: a page served by `edgeagent dashboard` needs no query string.
 */
export function withServedDefaults(params, served) {
  const out = new URLSearchParams(params);
  const pairs = [
    ["broker", served && served.ws_url],
    ["fleet", served && served.fleet],
    ["root", served && served.root],
  ];
  for (const [name, value] of pairs) {
    if (!out.has(name) && typeof value === "string" && value !== "") out.set(name, value);
  }
  return out;
}

function brokerFrom(value, location) {
  if (!value) return `ws://${location.hostname || "127.0.0.1"}:${DEFAULT_WS_PORT}`;
  if (!/^wss?:\/\/[^/\s]+(\/\S*)?$/.test(value)) {
    throw new ConfigError(`broker ${JSON.stringify(value)}: use ws://host:port or wss://host:port`);
  }
  return value;
}

/**
 * The page's options from its query string (`params`: a URLSearchParams), its location
 * ({hostname}) and an id to fall back on (`fallbackId()`, called only without `device`).
 */
export function pageOptions(params, location, fallbackId) {
  const root = params.get("root") || DEFAULT_ROOT;
  const fleet = params.get("fleet") || DEFAULT_FLEET;
  const topics = new Topics(root, fleet);
  const device = checkName(params.get("device") || fallbackId(), "device id");
  const healthText = params.get("health");
  const healthS = healthText === null ? DEFAULT_HEALTH_S : Number(healthText);
  if (!Number.isFinite(healthS) || healthS < 0.5 || healthS > 3600) {
    throw new ConfigError(`health ${JSON.stringify(healthText)}: seconds from 0.5 to 3600`);
  }
  const modelUrl = params.get("model") || DEFAULT_MODEL_URL;
  return {
    broker: brokerFrom(params.get("broker"), location),
    root,
    fleet,
    topics,
    device,
    tags: parseTags(params.get("tags")),
    healthS,
    modelUrl,
  };
}

function roundMs(seconds) {
  return Math.round(seconds * 1000) / 1000;
}

/** A StateMessage; `ts` (Unix seconds) null leaves it out, as in the last will. */
export function stateMessage(device, status, ts, reason) {
  const msg = { type: "state", device, status };
  if (ts !== null && ts !== undefined) msg.ts = roundMs(ts);
  if (reason) msg.reason = reason;
  return msg;
}

/** The retained Manifest of this page (`skills`: SkillSpec objects). */
export function buildManifest({ device, fleet, tags, skills }) {
  return {
    type: "manifest",
    protocol: PROTOCOL_VERSION,
    device,
    fleet,
    tags,
    skills,
    events: [],
    max_payload: MAX_PAYLOAD,
    agent_version: AGENT_VERSION,
  };
}

/** A Health message; `slots`: the SkillSlots by name, `counters`: {served, failed, dropped}. */
export function healthMessage({ device, ts, uptimeS, counters, slots }) {
  const skills = {};
  let inFlight = 0;
  let queued = 0;
  for (const [name, slot] of slots) {
    skills[name] = slot.health();
    inFlight += slot.inFlight;
    queued += slot.queued;
  }
  return {
    type: "health",
    device,
    ts: roundMs(ts),
    uptime_s: roundMs(uptimeS),
    calls_served: counters.served,
    calls_failed: counters.failed,
    calls_dropped: counters.dropped,
    in_flight: inFlight,
    queue_depth: queued,
    skills,
  };
}

export function okReply(output) {
  return { type: "ok", output: output === undefined ? null : output };
}

export function errorReply(code, message) {
  return { type: "error", code, message };
}
