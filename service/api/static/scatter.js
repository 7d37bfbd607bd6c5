// The 2-D map of a collection (from GET /collections/{name}/map) as an SVG scatter plot,
// with the query and its neighbours marked.

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 400;
const HEIGHT = 300;
const PAD = 16;

function element(name, attrs, parent) {
  const el = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, String(value));
  parent.appendChild(el);
  return el;
}

function titled(el, text) {
  const title = document.createElementNS(SVG, "title");
  title.textContent = text;
  el.appendChild(title);
}

/**
 * Draw `points` ([{id, x, y}]) into `svg`; `query` ({x, y}) as a diamond, `neighbours` (a Set
 * of ids) ringed. Returns a one-line description of the picture.
 */
export function drawMap(svg, points, query, neighbours) {
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${WIDTH} ${HEIGHT}`);
  const all = query ? [...points, query] : points;
  if (all.length === 0) return "The collection is empty: nothing to place yet.";
  const xs = all.map((p) => p.x);
  const ys = all.map((p) => p.y);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  const [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  // each axis spans the frame; one with no spread puts everything on its middle
  const sx = (x) => (x1 > x0 ? PAD + ((x - x0) / (x1 - x0)) * (WIDTH - 2 * PAD) : WIDTH / 2);
  const sy = (y) =>
    y1 > y0 ? HEIGHT - PAD - ((y - y0) / (y1 - y0)) * (HEIGHT - 2 * PAD) : HEIGHT / 2;
  element("rect", { x: 0, y: 0, width: WIDTH, height: HEIGHT, class: "map-frame" }, svg);
  for (const p of points) {
    const near = neighbours.has(p.id);
    const dot = element(
      "circle",
      { cx: sx(p.x), cy: sy(p.y), r: near ? 5 : 3, class: near ? "point near" : "point" },
      svg,
    );
    titled(dot, near ? `${p.id} (a neighbour)` : p.id);
  }
  if (query) {
    const [cx, cy] = [sx(query.x), sy(query.y)];
    const d = 7;
    const mark = element(
      "polygon",
      { points: `${cx},${cy - d} ${cx + d},${cy} ${cx},${cy + d} ${cx - d},${cy}`, class: "query" },
      svg,
    );
    titled(mark, "your input");
  }
  const near = points.filter((p) => neighbours.has(p.id)).length;
  const placed = points.length === 1 ? "1 item placed" : `${points.length} items placed`;
  return (
    `${placed} by the two principal components of the vectors` +
    (query ? `; your input is the diamond, and ${near} of its neighbours are ringed.` : ".")
  );
}
