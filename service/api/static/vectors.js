// Small vector arithmetic for the playground: means, norms and a tiny PCA.

/** The mean of equal-length vectors, as a Float64Array. */
export function mean(vectors) {
  const out = new Float64Array(vectors[0].length);
  for (const v of vectors) for (let i = 0; i < out.length; i++) out[i] += v[i];
  for (let i = 0; i < out.length; i++) out[i] /= vectors.length;
  return out;
}

/**
 * Per-step vectors pooled as service/inference/pooling.py does for a collection: "last" (the last
 * step), "stats" (mean ⊕ population standard deviation, twice as long) or else the mean.
 */
export function pool(steps, pooling) {
  if (pooling === "last") return Float64Array.from(steps[steps.length - 1]);
  const m = mean(steps);
  if (pooling !== "stats") return m;
  const d = m.length;
  const out = new Float64Array(2 * d);
  out.set(m);
  for (const v of steps) for (let i = 0; i < d; i++) out[d + i] += (v[i] - m[i]) ** 2;
  for (let i = 0; i < d; i++) out[d + i] = Math.sqrt(out[d + i] / steps.length);
  return out;
}

/** `v` scaled to unit length (a zero vector stays zero), as a plain array. */
export function normalize(v) {
  let sum = 0;
  for (const x of v) sum += x * x;
  const norm = Math.sqrt(sum) || 1;
  return Array.from(v, (x) => x / norm);
}

function dot(a, b) {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

/** (v - mean) projected on each of `axes`. */
export function project(v, center, axes) {
  const d = Array.from(v, (x, i) => x - center[i]);
  return axes.map((axis) => dot(d, axis));
}

/**
 * Coordinates of each vector along the `count` leading principal components, by power
 * iteration with deflation on the Gram matrix (n x n: there are few steps, many dims).
 */
export function principalCoords(vectors, count) {
  const n = vectors.length;
  const center = mean(vectors);
  const rows = vectors.map((v) => Array.from(v, (x, i) => x - center[i]));
  const gram = rows.map((a) => rows.map((b) => dot(a, b)));
  const coords = rows.map(() => new Array(count).fill(0));
  for (let c = 0; c < count; c++) {
    let u = Array.from({ length: n }, (_, i) => 1 + ((i * 7919) % 13) / 13);
    let value = 0;
    for (let iter = 0; iter < 100; iter++) {
      const next = gram.map((row) => dot(row, u));
      const norm = Math.sqrt(dot(next, next));
      if (norm < 1e-12) break;
      value = norm;
      u = next.map((x) => x / norm);
    }
    if (value < 1e-12) break;
    const scale = Math.sqrt(value);
    for (let i = 0; i < n; i++) coords[i][c] = u[i] * scale;
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) gram[i][j] -= value * u[i] * u[j];
  }
  return coords;
}
