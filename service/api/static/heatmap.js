// Pictures of per-step context vectors: a steps x dimensions heat map (audio, text) and a
// patch grid in false colour over the picture (image).

import { principalCoords } from "./vectors.js";

const NEGATIVE = [59, 76, 192];
const MIDDLE = [242, 242, 242];
const POSITIVE = [180, 4, 38];

/** The value below which 98% of |values| lie: a colour scale one outlier cannot wash out. */
function robustScale(steps) {
  const magnitudes = [];
  for (const step of steps) for (const x of step) magnitudes.push(Math.abs(x));
  magnitudes.sort((a, b) => a - b);
  return magnitudes[Math.floor(0.98 * (magnitudes.length - 1))] || 1;
}

function blend(a, b, t) {
  return a.map((x, i) => Math.round(x + (b[i] - x) * t));
}

/** A diverging colour: blue below zero, light grey at zero, red above. */
export function colour(value, scale) {
  const t = Math.max(-1, Math.min(1, value / scale));
  return t < 0 ? blend(MIDDLE, NEGATIVE, -t) : blend(MIDDLE, POSITIVE, t);
}

/**
 * Draw `steps` (one vector per step) with time left to right and dimensions top to bottom,
 * one canvas pixel per value; CSS scales it up without smoothing.
 */
export function drawMatrix(canvas, steps) {
  const width = steps.length;
  const height = steps[0].length;
  canvas.width = width;
  canvas.height = height;
  canvas.classList.remove("grid");
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(width, height);
  const scale = robustScale(steps);
  for (let t = 0; t < width; t++) {
    for (let d = 0; d < height; d++) {
      const [r, g, b] = colour(steps[t][d], scale);
      const at = 4 * (d * width + t);
      image.data[at] = r;
      image.data[at + 1] = g;
      image.data[at + 2] = b;
      image.data[at + 3] = 255;
    }
  }
  ctx.putImageData(image, 0, 0);
}

const GRID_PX = 280;

/**
 * Draw the picture with its patch grid on top, each cell coloured by the first three
 * principal components of the cells' vectors (as red, green and blue): cells the model
 * describes alike look alike.
 */
export function drawPatchGrid(canvas, steps, grid, bitmap) {
  const [rows, cols] = grid;
  canvas.width = GRID_PX;
  canvas.height = GRID_PX;
  canvas.classList.add("grid");
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, GRID_PX, GRID_PX);
  if (bitmap) ctx.drawImage(bitmap, 0, 0, GRID_PX, GRID_PX);
  const coords = principalCoords(steps, 3);
  const lows = [0, 1, 2].map((c) => Math.min(...coords.map((p) => p[c])));
  const highs = [0, 1, 2].map((c) => Math.max(...coords.map((p) => p[c])));
  const cellW = GRID_PX / cols;
  const cellH = GRID_PX / rows;
  ctx.globalAlpha = 0.6;
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const p = coords[r * cols + c];
      const rgb = p.map((x, i) => {
        const span = highs[i] - lows[i];
        return span > 1e-12 ? Math.round((255 * (x - lows[i])) / span) : 128;
      });
      ctx.fillStyle = `rgb(${rgb[0]}, ${rgb[1]}, ${rgb[2]})`;
      ctx.fillRect(c * cellW, r * cellH, cellW, cellH);
    }
  }
  ctx.globalAlpha = 1;
  ctx.strokeStyle = "rgba(0, 0, 0, 0.35)";
  ctx.lineWidth = 1;
  for (let i = 1; i < cols; i++) line(ctx, i * cellW, 0, i * cellW, GRID_PX);
  for (let i = 1; i < rows; i++) line(ctx, 0, i * cellH, GRID_PX, i * cellH);
}

function line(ctx, x0, y0, x1, y1) {
  ctx.beginPath();
  ctx.moveTo(x0, y0);
  ctx.lineTo(x1, y1);
  ctx.stroke();
}
