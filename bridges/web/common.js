// edgeagent in the browser: the topic tree, MQTT 5 request/response and small safe helpers.
// A classic script (no build step, no modules needed): load /vendor/mqtt/mqtt.min.js first, then
// this file; everything is on `window.edgeagent`. Nothing here knows about the dashboard's page.
// The protocol is docs/protocol.md; agent/protocol.py is its reference implementation.
"use strict";

(function (global) {
  const decoder = new TextDecoder();

  /** Largest message payload decoded, bytes; larger ones are dropped (counted by callers). */
  const MAX_PAYLOAD = 256 * 1024;

  /** The topic tree of one root and fleet (agent/protocol.py Topics). */
  function topics(root, fleet) {
    const base = `${root}/${fleet}`;
    return {
      base,
      state: (d) => `${base}/dev/${d}/state`,
      manifest: (d) => `${base}/dev/${d}/manifest`,
      health: (d) => `${base}/dev/${d}/health`,
      call: (d, skill) => `${base}/dev/${d}/call/${skill}`,
      event: (d, name) => `${base}/dev/${d}/event/${name}`,
      reply: (clientId) => `${base}/client/${clientId}/reply`,
      coordCall: (skill) => `${base}/coord/call/${skill}`,
      allStates: () => `${base}/dev/+/state`,
      allManifests: () => `${base}/dev/+/manifest`,
      allHealth: () => `${base}/dev/+/health`,
      allEvents: (name = "+") => `${base}/dev/+/event/${name}`,
      /** `{base}/dev/{device}/{kind}[/{name}]` -> {device, kind, name} or null. */
      parse(topic) {
        const prefix = `${base}/dev/`;
        if (!topic.startsWith(prefix)) return null;
        const parts = topic.slice(prefix.length).split("/");
        if (parts.length === 2) return { device: parts[0], kind: parts[1], name: null };
        if (parts.length === 3) return { device: parts[0], kind: parts[1], name: parts[2] };
        return null;
      },
    };
  }

  /** One topic level: the same rule as agent/protocol.py check_name. */
  const NAME_RE = /^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$/;
  function validName(s) {
    return typeof s === "string" && NAME_RE.test(s);
  }

  /** Bytes (Uint8Array/Buffer) or string -> parsed JSON, or null if too large or not JSON. */
  function decodeJson(payload, maxBytes = MAX_PAYLOAD) {
    if (payload == null || payload.length > maxBytes) return null;
    try {
      return JSON.parse(typeof payload === "string" ? payload : decoder.decode(payload));
    } catch (_e) {
      return null;
    }
  }

  function randomHex(bytes) {
    const a = new Uint8Array(bytes);
    crypto.getRandomValues(a);
    return Array.from(a, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  /** A first-in first-out list of at most `limit` items (newest first in `items`). */
  class BoundedList {
    constructor(limit) {
      this.limit = limit;
      this.items = [];
      this.dropped = 0;
    }
    push(item) {
      this.items.unshift(item);
      if (this.items.length > this.limit) {
        this.items.length = this.limit;
        this.dropped += 1;
      }
    }
  }

  /** Connect with MQTT 5 over WebSockets (MQTT.js); reconnects every 2 s. */
  function connect(wsUrl, options = {}) {
    if (!global.mqtt) throw new Error("mqtt.min.js is not loaded");
    return global.mqtt.connect(wsUrl, {
      protocolVersion: 5,
      clientId: options.clientId || `web-${randomHex(6)}`,
      clean: true,
      reconnectPeriod: 2000,
      connectTimeout: 10000,
      ...options,
    });
  }

  /**
   * Calls skills with MQTT 5 request/response: the request goes to a call topic with a Response
   * Topic and Correlation Data; the reply `{"type":"ok",...}` or `{"type":"error",...}` comes back.
   * At most `maxPending` calls wait at once (more are refused at once with a local `busy`).
   * A call with no reply in time resolves with a local `timeout` error (`local: true`).
   */
  class Caller {
    constructor(client, t, options = {}) {
      this.client = client;
      this.t = t;
      this.maxPending = options.maxPending || 64;
      this.replyTopic = t.reply(client.options.clientId);
      this.pending = new Map();
      client.subscribe(this.replyTopic, { qos: 1 });
      client.on("message", (topic, payload, packet) => this._onMessage(topic, payload, packet));
    }

    _onMessage(topic, payload, packet) {
      if (topic !== this.replyTopic) return;
      const raw = packet.properties && packet.properties.correlationData;
      if (!raw) return;
      const id = typeof raw === "string" ? raw : decoder.decode(raw);
      const waiting = this.pending.get(id);
      if (!waiting) return;
      this.pending.delete(id);
      clearTimeout(waiting.timer);
      const reply = decodeJson(payload);
      if (reply && (reply.type === "ok" || reply.type === "error")) waiting.resolve(reply);
      else waiting.resolve(localError("internal", "the reply is not a protocol reply"));
    }

    /** Publish `body` (an object, serialised to JSON) to `topic` and wait for the reply. */
    request(topic, body, timeoutMs = 5000) {
      if (this.pending.size >= this.maxPending) {
        return Promise.resolve(localError("busy", `${this.pending.size} calls already waiting`));
      }
      const id = randomHex(12);
      return new Promise((resolve) => {
        const timer = setTimeout(() => {
          this.pending.delete(id);
          resolve(localError("timeout", `no reply within ${timeoutMs / 1000} s`));
        }, timeoutMs);
        this.pending.set(id, { resolve, timer });
        this.client.publish(topic, JSON.stringify(body === undefined ? {} : body), {
          qos: 1,
          properties: {
            responseTopic: this.replyTopic,
            correlationData: id,
            contentType: "application/json",
            messageExpiryInterval: Math.max(1, Math.ceil(timeoutMs / 1000)),
          },
        });
      });
    }

    /** Call `skill` on `device` directly. */
    call(device, skill, input, timeoutMs) {
      return this.request(this.t.call(device, skill), input, timeoutMs);
    }
  }

  function localError(code, message) {
    return { type: "error", code, message, local: true };
  }

  /**
   * Build a DOM element with text only (never HTML): `attrs` are set as attributes (`class`,
   * `data-*`, …) except `on*` functions, which become listeners; children are nodes or strings
   * (strings become text nodes).
   */
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k.startsWith("on") && typeof v === "function") node.addEventListener(k.slice(2), v);
      else if (k === "value") node.value = v;
      else if (k === "checked") node.checked = Boolean(v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === undefined || c === null || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  /** Fetch the server's /config.json: {ws_url, fleet, root, report}. */
  async function loadConfig(url = "/config.json") {
    const resp = await fetch(url, { cache: "no-store" });
    if (!resp.ok) throw new Error(`${url}: HTTP ${resp.status}`);
    return resp.json();
  }

  global.edgeagent = {
    MAX_PAYLOAD,
    BoundedList,
    Caller,
    connect,
    decodeJson,
    el,
    loadConfig,
    localError,
    randomHex,
    topics,
    validName,
  };
})(window);
