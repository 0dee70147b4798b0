// A small JSON Schema checker for the browser device (pure, no I/O).
//
// It covers the subset of draft 2020-12 that pydantic generates for skill inputs and outputs:
// type (one or a list), properties, required, additionalProperties (false or a schema), items,
// minItems/maxItems, minimum/maximum, exclusiveMinimum/exclusiveMaximum, minLength/maxLength,
// enum, const, anyOf, and $ref to "#/$defs/...". It is stricter than pydantic's lax mode: a
// string is never a number. Problems are reported as "loc: message" (the agent's wording where
// it can), at most `limit` of them, so a caller sees a bounded, readable summary.

const TYPE_WORDS = {
  object: "a valid dictionary",
  array: "a valid list",
  number: "a valid number",
  integer: "a valid integer",
  string: "a valid string",
  boolean: "a valid boolean",
  null: "None",
};

function typeOf(value) {
  if (value === null) return "null";
  if (Array.isArray(value)) return "array";
  if (typeof value === "number") return Number.isFinite(value) ? "number" : "nonfinite";
  return typeof value;
}

function hasType(value, type) {
  const t = typeOf(value);
  if (type === "integer") return t === "number" && Number.isInteger(value);
  if (type === "number") return t === "number";
  return t === type;
}

function resolve(schema, root) {
  let s = schema;
  for (let depth = 0; s && typeof s.$ref === "string" && depth < 16; depth += 1) {
    const m = /^#\/\$defs\/(.+)$/.exec(s.$ref);
    s = m && root.$defs ? root.$defs[m[1]] : undefined;
  }
  return s || {};
}

function checkNumber(s, v, out, loc) {
  if (s.minimum !== undefined && v < s.minimum) {
    out.push([loc, `Input should be greater than or equal to ${s.minimum}`]);
  }
  if (s.maximum !== undefined && v > s.maximum) {
    out.push([loc, `Input should be less than or equal to ${s.maximum}`]);
  }
  if (s.exclusiveMinimum !== undefined && v <= s.exclusiveMinimum) {
    out.push([loc, `Input should be greater than ${s.exclusiveMinimum}`]);
  }
  if (s.exclusiveMaximum !== undefined && v >= s.exclusiveMaximum) {
    out.push([loc, `Input should be less than ${s.exclusiveMaximum}`]);
  }
}

function checkArray(s, v, out, loc, root) {
  if (s.minItems !== undefined && v.length < s.minItems) {
    out.push([loc, `List should have at least ${s.minItems} items after validation, not ${v.length}`]);
  }
  if (s.maxItems !== undefined && v.length > s.maxItems) {
    out.push([loc, `List should have at most ${s.maxItems} items after validation, not ${v.length}`]);
  }
  if (s.items) {
    for (let i = 0; i < v.length && out.length < 64; i += 1) {
      walk(s.items, v[i], out, [...loc, i], root);
    }
  }
}

function checkObject(s, v, out, loc, root) {
  const props = s.properties || {};
  for (const name of s.required || []) {
    if (!(name in v)) out.push([[...loc, name], "Field required"]);
  }
  for (const [name, item] of Object.entries(v)) {
    if (name in props) {
      walk(props[name], item, out, [...loc, name], root);
    } else if (s.additionalProperties === false) {
      out.push([[...loc, name], "Extra inputs are not permitted"]);
    } else if (s.additionalProperties && typeof s.additionalProperties === "object") {
      walk(s.additionalProperties, item, out, [...loc, name], root);
    }
  }
}

function checkString(s, v, out, loc) {
  if (s.minLength !== undefined && v.length < s.minLength) {
    out.push([loc, `String should have at least ${s.minLength} characters`]);
  }
  if (s.maxLength !== undefined && v.length > s.maxLength) {
    out.push([loc, `String should have at most ${s.maxLength} characters`]);
  }
}

function walk(schema, value, out, loc, root) {
  const s = resolve(schema, root);
  if (s.anyOf) {
    const fits = s.anyOf.some((alt) => {
      const sub = [];
      walk(alt, value, sub, loc, root);
      return sub.length === 0;
    });
    if (!fits) out.push([loc, "Input matches none of the allowed forms"]);
    return;
  }
  if (s.const !== undefined && value !== s.const) {
    out.push([loc, `Input should be ${JSON.stringify(s.const)}`]);
    return;
  }
  if (s.enum && !s.enum.some((e) => e === value)) {
    out.push([loc, `Input should be ${s.enum.map((e) => JSON.stringify(e)).join(" or ")}`]);
    return;
  }
  if (s.type !== undefined) {
    const types = Array.isArray(s.type) ? s.type : [s.type];
    if (!types.some((t) => hasType(value, t))) {
      out.push([loc, `Input should be ${TYPE_WORDS[types[0]] || types[0]}`]);
      return;
    }
  }
  const t = typeOf(value);
  if (t === "number") checkNumber(s, value, out, loc);
  else if (t === "array") checkArray(s, value, out, loc, root);
  else if (t === "object") checkObject(s, value, out, loc, root);
  else if (t === "string") checkString(s, value, out, loc);
}

/** Every problem of `value` against `schema`, as [loc (array), message] pairs. */
export function problems(schema, value) {
  const out = [];
  walk(schema, value, out, [], schema);
  return out;
}

/** A one-line summary of the problems (at most `limit`), or null when `value` is valid. */
export function summarize(schema, value, limit = 5) {
  const found = problems(schema, value);
  if (found.length === 0) return null;
  const parts = found.slice(0, limit).map(([loc, msg]) => `${loc.join(".") || "(body)"}: ${msg}`);
  if (found.length > limit) parts.push(`and ${found.length - limit} more`);
  return parts.join("; ");
}
