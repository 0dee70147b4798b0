// A form generated from a skill's input JSON Schema (as pydantic writes it): numbers and
// integers with their bounds, booleans, strings, enums, optional values, nested objects; anything
// else (arrays, unions, deep nesting) is a JSON text field. `buildForm(schema)` returns
// {node, read}: read() -> {ok: true, value} or {ok: false, errors: [..]} (the form's own checks).
// Text only: labels and descriptions from the schema are never parsed as HTML.
"use strict";

(function (global) {
  const el = global.edgeagent.el;
  const MAX_DEPTH = 4;
  const MAX_FIELDS = 40;

  function resolve(schema, root, seen = 0) {
    if (schema && typeof schema.$ref === "string" && seen < 8) {
      const m = /^#\/(\$defs|definitions)\/(.+)$/.exec(schema.$ref);
      const target = m && root[m[1]] && root[m[1]][m[2]];
      if (target) return resolve({ ...target, ...withoutRef(schema) }, root, seen + 1);
    }
    return schema || {};
  }

  function withoutRef(schema) {
    const copy = { ...schema };
    delete copy.$ref;
    return copy;
  }

  /** `anyOf: [X, {type: "null"}]` (an Optional field) -> X, with nullable set. */
  function unwrapOptional(schema, root) {
    const alts = schema.anyOf || schema.oneOf;
    if (!Array.isArray(alts)) return schema;
    const nonNull = alts.filter((s) => !(s && s.type === "null"));
    if (nonNull.length === 1 && alts.length === 2) {
      const inner = resolve(nonNull[0], root);
      return { ...inner, title: schema.title || inner.title,
        description: schema.description || inner.description, default: schema.default,
        nullable: true };
    }
    return schema;
  }

  function kindOf(s) {
    if (Array.isArray(s.enum)) return "enum";
    if ("const" in s) return "const";
    if (s.type === "object" && s.properties) return "object";
    if (["integer", "number", "boolean", "string"].includes(s.type)) return s.type;
    return "json";
  }

  function label(name, s, required) {
    return el("span", { class: "label" }, s.title || name, required ? " *" : "");
  }

  function hint(s) {
    const bits = [];
    if (s.description) bits.push(s.description);
    const lo = s.minimum ?? s.exclusiveMinimum;
    const hi = s.maximum ?? s.exclusiveMaximum;
    if (lo !== undefined || hi !== undefined) bits.push(`range ${lo ?? "…"} – ${hi ?? "…"}`);
    if (s.type === "array") {
      const n = s.minItems !== undefined && s.minItems === s.maxItems ? `${s.minItems} ` : "";
      const of = s.items && s.items.type ? ` of ${n}${s.items.type}s` : n ? ` of ${n}items` : "";
      bits.push(`JSON array${of}`);
    }
    if (s.default !== undefined) bits.push(`default ${JSON.stringify(s.default)}`);
    return bits.length ? el("span", { class: "hint" }, bits.join(" · ")) : null;
  }

  function numberField(path, s, required) {
    const isInt = s.type === "integer";
    const input = el("input", { type: "number", name: path, step: isInt ? "1" : "any",
      min: s.minimum ?? s.exclusiveMinimum, max: s.maximum ?? s.exclusiveMaximum,
      placeholder: s.default !== undefined ? String(s.default) : "" });
    const read = () => {
      const text = input.value.trim();
      if (text === "") return empty(path, s, required);
      const v = Number(text);
      if (!Number.isFinite(v)) return fail(`${path}: not a number`);
      if (isInt && !Number.isInteger(v)) return fail(`${path}: must be a whole number`);
      if (s.minimum !== undefined && v < s.minimum) return fail(`${path}: at least ${s.minimum}`);
      if (s.maximum !== undefined && v > s.maximum) return fail(`${path}: at most ${s.maximum}`);
      if (s.exclusiveMinimum !== undefined && v <= s.exclusiveMinimum)
        return fail(`${path}: more than ${s.exclusiveMinimum}`);
      if (s.exclusiveMaximum !== undefined && v >= s.exclusiveMaximum)
        return fail(`${path}: less than ${s.exclusiveMaximum}`);
      return { ok: true, value: v };
    };
    return { node: input, read };
  }

  function stringField(path, s, required) {
    const input = el("input", { type: "text", name: path, maxlength: s.maxLength,
      placeholder: s.default !== undefined ? String(s.default) : "" });
    const read = () => {
      const v = input.value;
      if (v === "") return empty(path, s, required);
      if (s.minLength !== undefined && v.length < s.minLength)
        return fail(`${path}: at least ${s.minLength} characters`);
      if (s.pattern) {
        try {
          if (!new RegExp(s.pattern, "u").test(v)) return fail(`${path}: must match ${s.pattern}`);
        } catch (_e) { /* a pattern JavaScript cannot compile: the device checks it */ }
      }
      return { ok: true, value: v };
    };
    return { node: input, read };
  }

  function booleanField(path, s) {
    const input = el("input", { type: "checkbox", name: path, checked: s.default === true });
    return { node: input, read: () => ({ ok: true, value: input.checked }) };
  }

  function enumField(path, s, required) {
    const values = kindOf(s) === "const" ? [s.const] : s.enum;
    const select = el("select", { name: path },
      required ? null : el("option", { value: "" }, "(leave out)"),
      values.map((v, i) => el("option", { value: String(i) }, JSON.stringify(v))));
    if (s.default !== undefined) {
      const i = values.findIndex((v) => JSON.stringify(v) === JSON.stringify(s.default));
      if (i >= 0) select.value = String(i);
    }
    const read = () => (select.value === "" ? { ok: true, omit: true }
      : { ok: true, value: values[Number(select.value)] });
    return { node: select, read };
  }

  function jsonField(path, s, required) {
    const area = el("textarea", { name: path, rows: 2, class: "json",
      placeholder: s.default !== undefined ? JSON.stringify(s.default) : "JSON" });
    const read = () => {
      const text = area.value.trim();
      if (text === "") return empty(path, s, required);
      try {
        return { ok: true, value: JSON.parse(text) };
      } catch (e) {
        return fail(`${path}: not JSON (${e.message})`);
      }
    };
    return { node: area, read };
  }

  function objectField(path, s, root, depth) {
    const names = Object.keys(s.properties || {});
    if (depth > MAX_DEPTH || names.length > MAX_FIELDS) return jsonField(path, s, false);
    const required = new Set(s.required || []);
    const fields = names.map((name) => {
      const sub = unwrapOptional(resolve(s.properties[name], root), root);
      const p = path ? `${path}.${name}` : name;
      const f = field(p, sub, root, depth + 1, required.has(name));
      const row = el("label", { class: "field", "data-field": p }, label(name, sub,
        required.has(name)), f.node, hint(sub));
      return { name, f, row };
    });
    const node = depth === 0 ? el("div", { class: "fields" }, fields.map((x) => x.row))
      : el("fieldset", {}, el("legend", {}, s.title || path), fields.map((x) => x.row));
    const read = () => {
      const value = {};
      const errors = [];
      for (const { name, f } of fields) {
        const r = f.read();
        if (!r.ok) errors.push(...r.errors);
        else if (!r.omit) value[name] = r.value;
      }
      return errors.length ? { ok: false, errors } : { ok: true, value };
    };
    return { node, read };
  }

  function field(path, s, root, depth, required) {
    switch (kindOf(s)) {
      case "integer":
      case "number":
        return numberField(path, s, required);
      case "string":
        return stringField(path, s, required);
      case "boolean":
        return booleanField(path, s);
      case "enum":
      case "const":
        return enumField(path, s, required);
      case "object":
        return objectField(path, s, root, depth);
      default:
        return jsonField(path, s, required);
    }
  }

  function empty(path, s, required) {
    if (s.nullable && required) return { ok: true, value: null };
    return required ? fail(`${path}: required`) : { ok: true, omit: true };
  }

  function fail(message) {
    return { ok: false, errors: [message] };
  }

  /** The form for a skill's input schema; a schema with no properties gives an empty form. */
  function buildForm(schema) {
    const root = schema || {};
    const top = resolve(root, root);
    if (kindOf(top) === "object" || (top.type === "object" && !top.properties)) {
      return objectField("", { properties: {}, ...top }, root, 0);
    }
    return jsonField("input", top, true);
  }

  global.edgeagent.buildForm = buildForm;
})(window);
