// The model skill: the zoo's digits model (models/zoo/digits/digits.onnx) in onnxruntime-web,
// announced exactly as the meter's `read_digit` (examples/smart-home/smarthome/meter.py), so the
// coordinator routes it like any other device offering that skill.

export const MODEL_NAME = "digits";
export const MODEL_VERSION = "1";
export const INPUT_NAME = "pixels";
export const OUTPUT_NAME = "logits";

/** The SkillSpec of read_digit: the same name, schemas and limits as the meter's. */
export const READ_DIGIT_SPEC = Object.freeze({
  name: "read_digit",
  description: "Read the digit in an 8x8 grey image (a meter or keypad cell).",
  tags: { kind: "meter" },
  side_effect: "read",
  idempotent: true,
  input_schema: {
    properties: {
      pixels: {
        description: "64 grey values, row by row, 0 (paper) to 16.",
        items: { type: "number" },
        maxItems: 64,
        minItems: 64,
        title: "Pixels",
        type: "array",
      },
    },
    required: ["pixels"],
    title: "Image8x8",
    type: "object",
  },
  output_schema: {
    properties: {
      digit: {
        description: "The digit read.",
        maximum: 9,
        minimum: 0,
        title: "Digit",
        type: "integer",
      },
      confidence: {
        description: "Softmax probability of that digit.",
        maximum: 1,
        minimum: 0,
        title: "Confidence",
        type: "number",
      },
    },
    required: ["digit", "confidence"],
    title: "Digit",
    type: "object",
  },
  max_concurrency: 1,
  max_queue: 32,
  timeout_s: 10.0,
  model: MODEL_NAME,
  model_version: MODEL_VERSION,
});

/** An 8x8 grey image (0..maxValue, ink high) -> the model's 64 float32 inputs in 0..1. */
export function featurize(pixels, maxValue = 16) {
  const x = new Float32Array(64);
  for (let i = 0; i < 64; i += 1) x[i] = Math.min(1, Math.max(0, pixels[i] / maxValue));
  return x;
}

/** The most likely digit and its softmax probability (rounded to 4 places) from 10 logits. */
export function bestDigit(logits) {
  let best = 0;
  for (let i = 1; i < logits.length; i += 1) if (logits[i] > logits[best]) best = i;
  let sum = 0;
  for (const v of logits) sum += Math.exp(v - logits[best]);
  return { digit: best, confidence: Math.round((1 / sum) * 10000) / 10000 };
}

/** Load the model with `ort` (onnxruntime-web's global) from `url`; returns run(pixels). */
export async function loadDigitModel(ort, url) {
  const session = await ort.InferenceSession.create(url, { executionProviders: ["wasm"] });
  return async function run(pixels) {
    const feeds = { [INPUT_NAME]: new ort.Tensor("float32", featurize(pixels), [1, 64]) };
    const out = await session.run(feeds);
    return bestDigit(Array.from(out[OUTPUT_NAME].data));
  };
}
