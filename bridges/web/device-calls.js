// What the browser device does with one request: pure decisions, in the protocol's order
// (agent/admission.py, agent/idempotency.py; docs/protocol.md "What the device does with a
// request"). device.js publishes what these decide; nothing here touches MQTT or the clock.

import { summarize } from "./device-schema.js";
import { errorReply, okReply, validPublishTopic } from "./device-core.js";

export const MAX_HOP = 64;
export const MAX_IDEMPOTENCY_KEY = 128;
export const PING_SKILL = "_ping";
export const BINARY_CONTENT_TYPE = "application/octet-stream";
/** Idempotency keys remembered (with their replies), least recent forgotten first. */
export const IDEMPOTENCY_KEYS_KEPT = 1024;
/** Repeats of a still-running call that may wait for its reply; more get `busy`. */
export const IDEMPOTENCY_WAITERS = 16;
/** Run times kept per skill for the health percentiles. */
export const LATENCY_WINDOW = 512;

/** A name quoted as the Python agent quotes it ('name'). */
function q(text) {
  return `'${text}'`;
}

function clip(text, n = 40) {
  return text.length <= n ? text : `${text.slice(0, n - 1)}…`;
}

/** One skill's limits, load, statistics and its FIFO of calls waiting for a slot. */
export class SkillSlot {
  constructor(spec, run) {
    this.spec = spec;
    this.run = run; // async (input) => output
    this.inFlight = 0;
    this.queued = 0;
    this.calls = 0;
    this.errors = 0;
    this.rejected = 0;
    this.latenciesMs = [];
    this.holders = 0; // runs holding a slot (an abandoned run keeps its slot until it returns)
    this.waiting = [];
  }

  isFull() {
    return this.inFlight + this.queued >= this.spec.max_concurrency + this.spec.max_queue;
  }

  /** Resolves when a slot is free, in arrival order. */
  acquire() {
    if (this.holders < this.spec.max_concurrency) {
      this.holders += 1;
      return Promise.resolve();
    }
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  release() {
    const next = this.waiting.shift();
    if (next) next();
    else this.holders -= 1;
  }

  /** A run ended (or, cut off, really returned): no longer in flight, its slot free. */
  finish() {
    this.inFlight -= 1;
    this.release();
  }

  addLatency(ms) {
    this.latenciesMs.push(ms);
    if (this.latenciesMs.length > LATENCY_WINDOW) this.latenciesMs.shift();
  }

  health() {
    const h = {
      calls: this.calls,
      errors: this.errors,
      rejected: this.rejected,
      in_flight: this.inFlight,
      queued: this.queued,
    };
    if (this.latenciesMs.length > 0) {
      const sorted = [...this.latenciesMs].sort((a, b) => a - b);
      const rank = (q) => sorted[Math.max(0, Math.ceil(q * sorted.length) - 1)];
      h.p50_ms = Math.round(rank(0.5) * 1000) / 1000;
      h.p95_ms = Math.round(rank(0.95) * 1000) / 1000;
    }
    if (this.spec.model) h.model = this.spec.model;
    if (this.spec.model_version) h.model_version = this.spec.model_version;
    return h;
  }
}

/** A 64-bit FNV-1a digest (hex) of a request's input: payload, content type, input property. */
export function inputDigest(payload, contentType, inputProperty) {
  let h1 = 0x811c9dc5;
  let h2 = 0x01000193 ^ 0x5bd1e995;
  const feed = (b) => {
    h1 = Math.imul(h1 ^ b, 0x01000193) >>> 0;
    h2 = Math.imul(h2 ^ b, 0x5bd1e995) >>> 0;
  };
  for (const b of payload) feed(b);
  for (const part of [contentType || "", inputProperty || ""]) {
    feed(0);
    for (let i = 0; i < part.length; i += 1) feed(part.charCodeAt(i) & 0xff);
  }
  return h1.toString(16).padStart(8, "0") + h2.toString(16).padStart(8, "0");
}

/** Keys of recent calls with their input digests and replies (bounded, least recent out). */
export class IdempotencyCache {
  constructor(keep = IDEMPOTENCY_KEYS_KEPT, maxWaiters = IDEMPOTENCY_WAITERS) {
    this.keep = keep;
    this.maxWaiters = maxWaiters;
    this.entries = new Map(); // key -> {digest, payload (string or null), waiters}
  }

  /** {kind: "new"} | {kind: "replay", payload} | {kind: "wait"} | {kind: "refuse", code, message} */
  lookup(key, skill, idem, digest, waiter) {
    const entry = this.entries.get(key);
    if (entry === undefined) return { kind: "new" };
    this.entries.delete(key);
    this.entries.set(key, entry); // most recent now
    if (entry.digest !== digest) {
      return refuse(
        "bad_request",
        `idempotency key ${q(clip(idem))} was used for a call to ` +
          `${q(skill)} with a different input: use a new key for a new call`,
      );
    }
    if (entry.payload !== null) return { kind: "replay", payload: entry.payload };
    if (entry.waiters.length >= this.maxWaiters) {
      return refuse("busy", "too many repeats of a call still running");
    }
    entry.waiters.push(waiter);
    return { kind: "wait" };
  }

  start(key, digest) {
    this.entries.set(key, { digest, payload: null, waiters: [] });
    while (this.entries.size > this.keep) {
      this.entries.delete(this.entries.keys().next().value);
    }
  }

  /** Record a reply (null: the call never ran, the key is forgotten); returns the waiters. */
  finish(key, payload) {
    const entry = this.entries.get(key);
    if (entry === undefined) return [];
    if (payload === null) {
      this.entries.delete(key);
      return [];
    }
    entry.payload = payload;
    const waiters = entry.waiters;
    entry.waiters = [];
    return waiters;
  }
}

function refuse(code, message, skillFull = false) {
  return { kind: "refuse", code, message, skillFull, reply: errorReply(code, message) };
}

export function parseHop(value) {
  if (value === undefined || value === null) return 0;
  if (!/^[0-9]{1,3}$/.test(value) || Number(value) > MAX_HOP) return null;
  return Number(value);
}

/** The skill's input from the payload bytes: {value} or a bad_request refusal. */
export function parseInput(spec, payload, contentType) {
  if (contentType === BINARY_CONTENT_TYPE) {
    return refuse("bad_request", `skill ${q(spec.name)} takes no binary input; send JSON`);
  }
  let value;
  try {
    const text = new TextDecoder("utf-8", { fatal: true }).decode(payload);
    value = text.trim() === "" ? {} : JSON.parse(text);
  } catch (err) {
    return refuse("bad_request", `invalid input: (body): Invalid JSON: ${err.message}`);
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    return refuse("bad_request", "invalid input: (body): Input should be a valid dictionary");
  }
  const problem = summarize(spec.input_schema, value);
  if (problem !== null) return refuse("bad_request", `invalid input: ${problem}`);
  return { value };
}

function admit(req, state) {
  const hop = parseHop(req.userProps.hop);
  if (hop === null) {
    return refuse("bad_request", `user property 'hop' must be a whole number from 0 to ${MAX_HOP}`);
  }
  if (state.draining) return refuse("unavailable", "device is shutting down");
  if (req.payload.length > state.maxPayload) {
    return refuse(
      "bad_request",
      `payload of ${req.payload.length} bytes exceeds this device's limit of ${state.maxPayload} bytes`,
    );
  }
  const slot = state.slots.get(req.skill);
  if (slot === undefined && req.skill === PING_SKILL) return { kind: "ping" };
  if (slot === undefined) {
    const known = [...state.slots.keys()].sort().join(", ") || "none";
    return refuse(
      "not_found",
      `device ${q(state.device)} has no skill ${q(req.skill)} (skills: ${known})`,
    );
  }
  if (slot.isFull()) {
    return refuse(
      "busy",
      `skill ${q(req.skill)} is at capacity (${slot.spec.max_concurrency} running, ` +
        `${slot.spec.max_queue} queued); retry later or elsewhere`,
      true,
    );
  }
  return { kind: "admitted", hop, slot };
}

function idempotency(req, state) {
  const idem = req.userProps.idem;
  if (idem === undefined) return null;
  if (idem.length === 0 || idem.length > MAX_IDEMPOTENCY_KEY) {
    return refuse(
      "bad_request",
      `idempotency key of ${idem.length} characters: use 1 to ${MAX_IDEMPOTENCY_KEY}`,
    );
  }
  const caller = req.userProps.caller || req.responseTopic;
  const key = `${caller}\u0000${req.skill}\u0000${idem}`;
  const digest = inputDigest(req.payload, req.contentType, req.userProps.input);
  const seen = state.idem.lookup(key, req.skill, idem, digest, req.waiter);
  return seen.kind === "new" ? { kind: "key", key, digest } : seen;
}

/**
 * What to do with one request, in the protocol's order. `req`: {skill, payload (Uint8Array),
 * responseTopic, contentType, userProps ({name: first value}), expiryS, waiter}; `state`:
 * {device, draining, maxPayload, slots (Map name -> SkillSlot), idem (IdempotencyCache), now
 * (monotonic seconds)}. Returns {kind: "drop" | "refuse" | "replay" | "wait" | "ping" | "run"}.
 * A "run" has been counted as queued on its slot and, with a key, started in the cache.
 */
export function decideCall(req, state) {
  if (!validPublishTopic(req.responseTopic)) {
    return { kind: "drop", reason: "no response topic (or not a publishable one)" };
  }
  const keyed = idempotency(req, state);
  if (keyed !== null && keyed.kind !== "key") return keyed;
  const admitted = admit(req, state);
  if (admitted.kind !== "admitted") {
    if (admitted.skillFull) state.slots.get(req.skill).rejected += 1;
    return admitted;
  }
  const parsed = parseInput(admitted.slot.spec, req.payload, req.contentType);
  if (parsed.kind === "refuse") return parsed;
  const expiry = req.expiryS;
  const deadline = expiry === undefined || expiry === null ? null : state.now + expiry;
  admitted.slot.queued += 1;
  if (keyed !== null) state.idem.start(keyed.key, keyed.digest);
  return {
    kind: "run",
    slot: admitted.slot,
    value: parsed.value,
    deadline,
    hop: admitted.hop,
    key: keyed === null ? null : keyed.key,
  };
}

/** When a queued call gets its slot: run it within `budgetS`, or drop it (deadline passed). */
export function startDecision(timeoutS, deadline, now) {
  if (deadline !== null && now >= deadline) return { kind: "drop", reason: "expired while queued" };
  return { kind: "run", budgetS: deadline === null ? timeoutS : Math.min(timeoutS, deadline - now) };
}

/** The output checked against the skill's output schema: null if fine, else an internal error. */
export function outputProblem(spec, output) {
  const problem = summarize(spec.output_schema, output);
  return problem === null ? null : errorReply("internal", `skill returned invalid output: ${problem}`);
}

/**
 * Run the slot's skill on `value` (counted in flight by the caller) within `budgetS` seconds:
 * its ok reply, `internal` (it threw, or its output does not match the output schema) or
 * `timeout`. The run stays in flight and keeps its slot until it really returns, even when cut
 * off (JavaScript cannot stop it), as the Python agent's worker threads do; `onFree()` then.
 */
export async function runBounded(slot, value, budgetS, onFree = () => {}) {
  let timer;
  const running = Promise.resolve()
    .then(() => slot.run(value))
    .then(
      (output) => outputProblem(slot.spec, output) || okReply(output),
      (err) => errorReply("internal", `${(err && err.name) || "Error"}: ${err && err.message}`),
    );
  const timedOut = errorReply(
    "timeout",
    `skill ${q(slot.spec.name)} took longer than ${budgetS.toFixed(3)} s`,
  );
  const late = new Promise((resolve) => {
    timer = setTimeout(() => resolve(timedOut), Math.max(0, budgetS * 1000));
  });
  const reply = await Promise.race([running, late]);
  clearTimeout(timer);
  const free = () => {
    slot.finish();
    onFree();
  };
  if (reply === timedOut) running.finally(free);
  else free();
  return reply;
}
