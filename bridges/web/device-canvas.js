// The drawing pad: a person draws a digit, the page reads it with the same skill the fleet
// calls. `toGrid` (pure) turns the drawing into the 8x8 image the digits model was trained on
// (scikit-learn's digits: the figure fills the height of a 32x32 box, 4x4 blocks counted 0..16).

const BOX = 32;

/** Ink of a width x height drawing (`ink[i]` in 0..1, row by row) -> 64 grey values 0..16. */
export function toGrid(ink, width, height) {
  let top = height;
  let left = width;
  let bottom = -1;
  let right = -1;
  for (let y = 0; y < height; y += 1) {
    for (let x = 0; x < width; x += 1) {
      if (ink[y * width + x] > 0.05) {
        top = Math.min(top, y);
        bottom = Math.max(bottom, y);
        left = Math.min(left, x);
        right = Math.max(right, x);
      }
    }
  }
  const grid = new Array(64).fill(0);
  if (bottom < 0) return grid;
  // The figure's longer side spans the box; the other is centred.
  const side = Math.max(bottom - top + 1, right - left + 1);
  const scale = side / BOX;
  const x0 = (left + right + 1) / 2 - side / 2;
  const y0 = (top + bottom + 1) / 2 - side / 2;
  const box = new Float32Array(BOX * BOX);
  for (let by = 0; by < BOX; by += 1) {
    for (let bx = 0; bx < BOX; bx += 1) {
      const sx = Math.floor(x0 + (bx + 0.5) * scale);
      const sy = Math.floor(y0 + (by + 0.5) * scale);
      if (sx >= 0 && sy >= 0 && sx < width && sy < height) box[by * BOX + bx] = ink[sy * width + sx];
    }
  }
  for (let gy = 0; gy < 8; gy += 1) {
    for (let gx = 0; gx < 8; gx += 1) {
      let on = 0;
      for (let dy = 0; dy < 4; dy += 1) {
        for (let dx = 0; dx < 4; dx += 1) on += box[(gy * 4 + dy) * BOX + gx * 4 + dx] > 0.5 ? 1 : 0;
      }
      grid[gy * 8 + gx] = on;
    }
  }
  return grid;
}

/** Draw with a pointer on `canvas`; `onDone(grid)` after each stroke; returns clear(). */
export function attachPad(canvas, onDone) {
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  const clear = () => {
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
  };
  clear();
  ctx.lineWidth = Math.round(canvas.width / 11);
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.strokeStyle = "#000";
  let drawing = false;
  const at = (ev) => {
    const r = canvas.getBoundingClientRect();
    return [((ev.clientX - r.left) * canvas.width) / r.width, ((ev.clientY - r.top) * canvas.height) / r.height];
  };
  canvas.addEventListener("pointerdown", (ev) => {
    drawing = true;
    canvas.setPointerCapture?.(ev.pointerId);
    const [x, y] = at(ev);
    ctx.beginPath();
    ctx.moveTo(x, y);
    ctx.lineTo(x + 0.1, y);
    ctx.stroke();
  });
  canvas.addEventListener("pointermove", (ev) => {
    if (!drawing) return;
    const [x, y] = at(ev);
    ctx.lineTo(x, y);
    ctx.stroke();
  });
  const end = () => {
    if (!drawing) return;
    drawing = false;
    const { data } = ctx.getImageData(0, 0, canvas.width, canvas.height);
    const ink = new Float32Array(canvas.width * canvas.height);
    for (let i = 0; i < ink.length; i += 1) ink[i] = 1 - data[i * 4] / 255;
    onDone(toGrid(ink, canvas.width, canvas.height));
  };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointerleave", end);
  return clear;
}
