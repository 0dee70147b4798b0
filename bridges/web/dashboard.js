// The fleet dashboard: devices live from their retained state and manifests, health sparklines
// from the periodic Health messages, each skill callable from a form (MQTT 5 request/response),
// events streaming. Talks to the broker itself over MQTT on WebSockets; every list is bounded and
// every text from the broker goes into the page as text, never as HTML.
"use strict";

(function () {
  const E = window.edgeagent;
  const el = E.el;
  const SVG = "http://www.w3.org/2000/svg";
  const LIMITS = { devices: 500, events: 100, spark: 60, replies: 10, text: 400 };

  const ui = {
    conn: document.getElementById("conn"),
    fleet: document.getElementById("fleet"),
    report: document.getElementById("report"),
    devices: document.getElementById("devices"),
    summary: document.getElementById("summary"),
    detail: document.getElementById("detail"),
    events: document.getElementById("events"),
    notes: document.getElementById("notes"),
  };

  const state = {
    t: null,
    caller: null,
    devices: new Map(),
    events: new E.BoundedList(LIMITS.events),
    selected: null,
    shownManifest: null,
    ignored: 0,
    queued: false,
  };

  function device(id) {
    let d = state.devices.get(id);
    if (!d) {
      if (state.devices.size >= LIMITS.devices) return null;
      d = { id, version: 0, status: "unknown", reason: null, manifest: null, health: null,
        spark: { served: [], queue: [], p50: [] }, lastServed: null, seen: null };
      state.devices.set(id, d);
    }
    return d;
  }

  function pushBounded(list, v) {
    list.push(v);
    if (list.length > LIMITS.spark) list.shift();
  }

  // ------------------------------------------------------------------------------------------
  // Messages

  function onMessage(topic, payload) {
    const where = state.t.parse(topic);
    if (!where || !E.validName(where.device)) return;
    if (payload.length === 0) return forget(where);
    const msg = E.decodeJson(payload);
    if (!msg || typeof msg !== "object") return ignore();
    const handler = { state: onState, manifest: onManifest, health: onHealth, event: onEvent };
    const fn = handler[where.kind];
    if (fn && msg.type === where.kind) fn(where, msg);
    else ignore();
    const d = state.devices.get(where.device);
    if (d) d.version += 1;
    schedule();
  }

  function ignore() {
    state.ignored += 1;
  }

  function forget(where) {
    // A retained message cleared: the device was removed from the fleet.
    const d = state.devices.get(where.device);
    if (!d) return;
    if (where.kind === "manifest") d.manifest = null;
    if (where.kind === "state") d.status = "unknown";
    d.version += 1;
    if (!d.manifest && d.status === "unknown") state.devices.delete(where.device);
    schedule();
  }

  function onState(where, msg) {
    const d = device(where.device);
    if (!d) return ignore();
    d.status = String(msg.status);
    d.reason = msg.reason ? String(msg.reason) : null;
  }

  function onManifest(where, msg) {
    const d = device(where.device);
    if (!d) return ignore();
    d.manifest = msg;
  }

  function onHealth(where, msg) {
    const d = device(where.device);
    if (!d) return ignore();
    d.health = msg;
    d.seen = Date.now();
    const served = Number(msg.calls_served) || 0;
    pushBounded(d.spark.served, d.lastServed === null ? 0 : Math.max(0, served - d.lastServed));
    d.lastServed = served;
    pushBounded(d.spark.queue, Number(msg.queue_depth) || 0);
    const p50s = Object.values(msg.skills || {}).map((s) => s && s.p50_ms).filter(Number.isFinite);
    pushBounded(d.spark.p50, p50s.length ? Math.max(...p50s) : 0);
  }

  function onEvent(where, msg) {
    state.events.push({ device: where.device, name: where.name, ts: msg.ts, data: msg.data });
  }

  // ------------------------------------------------------------------------------------------
  // Rendering (batched: at most once per animation frame)

  function schedule() {
    if (state.queued) return;
    state.queued = true;
    requestAnimationFrame(() => {
      state.queued = false;
      render();
    });
  }

  function clip(text) {
    const s = typeof text === "string" ? text : JSON.stringify(text);
    return s && s.length > LIMITS.text ? `${s.slice(0, LIMITS.text)}…` : s;
  }

  function sparkline(values, what) {
    const w = 90, h = 22;
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("class", "spark");
    svg.setAttribute("data-series", what);
    svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
    svg.setAttribute("width", w);
    svg.setAttribute("height", h);
    const last = values.length ? values[values.length - 1] : null;
    const title = document.createElementNS(SVG, "title");
    title.textContent = `${what}: ${last === null ? "no health yet" : Math.round(last * 10) / 10}`;
    svg.append(title);
    if (values.length > 1) {
      const max = Math.max(...values, 1e-9);
      const step = w / (Math.max(values.length, 12) - 1); // right-aligned, newest last
      const x0 = w - step * (values.length - 1);
      const pts = values.map((v, i) => `${(x0 + i * step).toFixed(1)},${(h - 2 - (v / max) * (h - 4)).toFixed(1)}`);
      const line = document.createElementNS(SVG, "polyline");
      line.setAttribute("points", pts.join(" "));
      svg.append(line);
    }
    return svg;
  }

  function tagChips(tags) {
    return Object.entries(tags || {}).slice(0, 12).map(([k, v]) =>
      el("span", { class: "tag" }, `${clip(k)}=${clip(String(v))}`));
  }

  // One <tr> per device, kept while the device is known: its first cell (the select button)
  // never changes, the others are rebuilt only when something about the device changed, so a
  // click is never lost to a row replaced under the pointer.
  const rows = new Map();

  function deviceCells(d) {
    const m = d.manifest || {};
    const skills = Array.isArray(m.skills) ? m.skills.length : 0;
    const last = (list) => (list.length ? Math.round(list[list.length - 1] * 10) / 10 : "–");
    return [
      el("td", {}, el("span", { class: "status", "data-status": d.status, title: d.reason || "" },
        d.status)),
      el("td", { class: "release" }, clip(m.release || "—")),
      el("td", { class: "profile" }, clip(m.profile || "—")),
      el("td", { class: "tags" }, tagChips(m.tags)),
      el("td", { class: "num" }, String(skills)),
      el("td", { class: "health" },
        el("span", { class: "metric" }, sparkline(d.spark.served, "calls served / interval"),
          el("small", {}, `calls ${last(d.spark.served)}`)),
        el("span", { class: "metric" }, sparkline(d.spark.queue, "queue depth"),
          el("small", {}, `queue ${last(d.spark.queue)}`)),
        el("span", { class: "metric" }, sparkline(d.spark.p50, "p50 ms"),
          el("small", {}, `p50 ${last(d.spark.p50)} ms`))),
    ];
  }

  function renderRows(ids) {
    for (const [id, row] of rows) {
      if (!state.devices.has(id)) {
        row.tr.remove();
        rows.delete(id);
      }
    }
    let order = false;
    for (const id of ids) {
      const d = state.devices.get(id);
      let row = rows.get(id);
      if (!row) {
        const tr = el("tr", { "data-device": id },
          el("td", {}, el("button", { class: "select", type: "button" }, id)));
        row = { tr, version: -1 };
        rows.set(id, row);
        order = true;
      }
      row.tr.classList.toggle("selected", id === state.selected);
      if (row.version === d.version) continue;
      row.version = d.version;
      while (row.tr.cells.length > 1) row.tr.lastChild.remove();
      row.tr.append(...deviceCells(d));
    }
    if (order) ui.devices.append(...ids.map((id) => rows.get(id).tr));
  }

  function render() {
    const ids = [...state.devices.keys()].sort();
    renderRows(ids);
    const online = ids.filter((id) => state.devices.get(id).status === "online").length;
    ui.summary.textContent = `${ids.length} devices, ${online} online` +
      (state.devices.size >= LIMITS.devices ? ` (showing the first ${LIMITS.devices})` : "");
    renderDetail();
    renderEvents();
    ui.notes.textContent = state.ignored ? `${state.ignored} messages ignored (not protocol)` : "";
  }

  function renderEvents() {
    ui.events.replaceChildren(...state.events.items.map((e) =>
      el("li", { "data-device": e.device, "data-event": e.name },
        el("time", {}, Number.isFinite(e.ts) ? new Date(e.ts * 1000).toLocaleTimeString() : "?"),
        el("b", {}, `${e.device}/${e.name}`), " ", el("code", {}, clip(e.data ?? {})))));
  }

  // ------------------------------------------------------------------------------------------
  // The selected device: its skills, each with a form, a raw JSON fallback and the last reply

  function select(id) {
    if (id === state.selected || !state.devices.has(id)) return; // keep the forms and replies
    state.selected = id;
    state.shownManifest = null;
    schedule();
  }

  function renderDetail() {
    const d = state.selected && state.devices.get(state.selected);
    if (!d) {
      ui.detail.replaceChildren(el("p", { class: "muted" }, "Select a device to call its skills."));
      state.shownManifest = null;
      return;
    }
    const head = ui.detail.querySelector(".detail-status");
    if (d.manifest === state.shownManifest && head) {
      head.textContent = d.status;
      head.setAttribute("data-status", d.status);
      return; // keep what the user typed in the forms
    }
    state.shownManifest = d.manifest;
    const m = d.manifest || {};
    const skills = Array.isArray(m.skills) ? m.skills.slice(0, 100) : [];
    ui.detail.replaceChildren(
      el("h2", {}, d.id, " ", el("span", { class: "status detail-status",
        "data-status": d.status }, d.status)),
      el("p", { class: "muted" }, `agent ${clip(m.agent_version || "?")} · max payload ` +
        `${m.max_payload ?? "?"} B · events: ${(m.events || []).map((e) => e.name).join(", ") || "none"}`),
      ...(skills.length ? skills.map((s) => skillCard(d.id, s))
        : [el("p", { class: "muted" }, "No manifest yet.")]));
  }

  function skillCard(deviceId, spec) {
    const name = String(spec.name);
    const form = E.buildForm(spec.input_schema);
    const errors = el("ul", { class: "form-errors" });
    const replies = el("div", { class: "replies" });
    const raw = el("textarea", { class: "raw", rows: 3, spellcheck: "false" });
    const send = async (input) => {
      const started = performance.now();
      const reply = await state.caller.call(deviceId, name, input, (Number(spec.timeout_s) || 5) * 1000 + 2000);
      replies.prepend(replyView(input, reply, performance.now() - started));
      while (replies.children.length > LIMITS.replies) replies.lastChild.remove();
    };
    const submit = (ev) => {
      ev.preventDefault();
      const r = form.read();
      errors.replaceChildren(...(r.ok ? [] : r.errors.map((e) => el("li", {}, e))));
      if (r.ok) send(r.value);
    };
    const sendRaw = () => {
      let input;
      try {
        input = raw.value.trim() === "" ? {} : JSON.parse(raw.value);
      } catch (e) {
        errors.replaceChildren(el("li", {}, `raw JSON: ${e.message}`));
        return;
      }
      errors.replaceChildren();
      send(input);
    };
    const details = el("details", { class: "raw",
      ontoggle: () => { if (details.open) fillRaw(raw, form); } },
      el("summary", {}, "raw JSON (sent as is, no checks)"), raw,
      el("button", { type: "button", class: "send-raw", onclick: sendRaw }, "Send raw JSON"));
    return el("section", { class: "skill", "data-skill": name },
      el("h3", {}, name, " ", el("span", { class: `badge ${spec.side_effect}` }, clip(spec.side_effect)),
        spec.model ? el("span", { class: "badge model" }, `model ${clip(spec.model)}`) : null),
      spec.description ? el("p", { class: "muted" }, clip(spec.description)) : null,
      el("form", { onsubmit: submit, novalidate: true }, form.node,
        el("button", { type: "submit", class: "call" }, `Call ${name}`)),
      errors, details, replies);
  }

  function fillRaw(raw, form) {
    // A hint, not a value: what the form holds now (an empty box sends {}).
    const r = form.read();
    raw.placeholder = JSON.stringify(r.ok ? r.value : {});
  }

  function replyView(input, reply, ms) {
    const ok = reply.type === "ok";
    return el("div", { class: "reply", "data-type": ok ? "ok" : "error" },
      el("div", { class: "reply-head" },
        ok ? el("span", { class: "code ok" }, "ok")
          : el("span", { class: "code" }, String(reply.code)),
        ` ${Math.round(ms)} ms`, reply.local ? " (in this page)" : "",
        el("code", { class: "input" }, ` ← ${clip(input)}`)),
      ok ? el("pre", { class: "output" }, clip(JSON.stringify(reply.output, null, 1)))
        : el("p", { class: "message" }, clip(String(reply.message)),
          reply.details ? el("code", {}, ` ${clip(reply.details)}`) : null));
  }

  // ------------------------------------------------------------------------------------------
  // Start

  function setConn(text, st) {
    ui.conn.textContent = text;
    ui.conn.setAttribute("data-state", st);
  }

  async function main() {
    let cfg;
    try {
      cfg = await E.loadConfig();
    } catch (e) {
      setConn(`no configuration: ${e.message}`, "error");
      return;
    }
    ui.fleet.textContent = `fleet ${cfg.fleet}`;
    if (cfg.report) {
      ui.report.replaceChildren(el("a", { href: cfg.report, target: "_blank", rel: "noopener" },
        "last simulator report"));
    }
    state.t = E.topics(cfg.root, cfg.fleet);
    const client = E.connect(cfg.ws_url);
    state.caller = new E.Caller(client, state.t);
    setConn(`connecting to ${cfg.ws_url}…`, "connecting");
    client.on("connect", () => {
      setConn(`connected to ${cfg.ws_url}`, "connected");
      const t = state.t;
      const filters = [t.allStates(), t.allManifests(), t.allHealth(), t.allEvents(), t.reply(client.options.clientId)];
      client.subscribe(filters, { qos: 1 });
    });
    client.on("reconnect", () => setConn(`reconnecting to ${cfg.ws_url}…`, "connecting"));
    client.on("offline", () => setConn(`broker unreachable at ${cfg.ws_url}`, "error"));
    client.on("error", (e) => setConn(`broker error: ${e.message}`, "error"));
    client.on("message", (topic, payload) => onMessage(topic, payload));
    ui.devices.addEventListener("click", (ev) => {
      const button = ev.target.closest("button.select");
      if (button) select(button.closest("tr").getAttribute("data-device"));
    });
    render();
  }

  main();
})();
