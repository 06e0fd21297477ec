// Charts drawn as SVG by hand (no library, no CDN): line charts of metrics over steps (linear or log scale),
// scatter plots of a param against a metric, and parallel coordinates of a grid.
const NS = "http://www.w3.org/2000/svg";
export const PALETTE = ["#2f6fdb", "#d9480f", "#1d8a4a", "#9c36b5", "#c98a00", "#0b7285", "#e64980", "#495057"];

function el(name, attrs = {}, text) {
  const node = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

export function fmt(value) {
  if (typeof value !== "number") return value === undefined || value === null ? "" : String(value);
  if (Number.isInteger(value) && Math.abs(value) < 1e7) return String(value);
  const a = Math.abs(value);
  return a !== 0 && (a < 1e-3 || a >= 1e6) ? value.toExponential(3) : String(Number(value.toPrecision(4)));
}

// A scale: domain -> pixels, with ticks. Log scales need positive values (others are dropped by the caller).
function scale(lo, hi, from, to, log) {
  if (log) {
    const a = Math.log10(lo), b = Math.log10(hi === lo ? lo * 10 : hi);
    const map = (v) => from + (Math.log10(v) - a) / (b - a) * (to - from);
    let ticks = [];
    for (let e = Math.floor(a); e <= Math.ceil(b); e++) ticks.push(10 ** e);
    ticks = ticks.filter((t) => t >= lo && t <= hi);
    // Within one decade no power of ten falls inside: label evenly spaced values instead (placed by the log map).
    if (ticks.length < 2) ticks = scale(lo, hi, from, to, false).ticks.filter((t) => t > 0);
    return { map, ticks };
  }
  if (hi === lo) { hi = lo + 1; lo = lo - 1; }
  const map = (v) => from + (v - lo) / (hi - lo) * (to - from);
  const raw = (hi - lo) / 5, mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(Number(t.toPrecision(12)));
  return { map, ticks };
}

function frame(width, height) {
  const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img" });
  return svg;
}

function axes(svg, x, y, box, xLabel, yLabel) {
  for (const t of y.ticks) {
    const py = y.map(t);
    if (py < box.top - 1 || py > box.bottom + 1) continue;
    svg.append(el("line", { class: "grid", x1: box.left, x2: box.right, y1: py, y2: py }));
    svg.append(el("text", { x: box.left - 4, y: py + 3, "text-anchor": "end" }, fmt(t)));
  }
  for (const t of x.ticks) {
    const px = x.map(t);
    if (px < box.left - 1 || px > box.right + 1) continue;
    svg.append(el("text", { x: px, y: box.bottom + 14, "text-anchor": "middle" }, fmt(t)));
  }
  svg.append(el("line", { class: "axis", x1: box.left, x2: box.right, y1: box.bottom, y2: box.bottom }));
  svg.append(el("line", { class: "axis", x1: box.left, x2: box.left, y1: box.top, y2: box.bottom }));
  if (xLabel) svg.append(el("text", { x: box.right, y: box.bottom + 28, "text-anchor": "end" }, xLabel));
  if (yLabel) svg.append(el("text", { x: box.left, y: box.top - 6 }, yLabel));
}

function extent(values) {
  let lo = Infinity, hi = -Infinity;
  for (const v of values) { if (v < lo) lo = v; if (v > hi) hi = v; }
  return [lo, hi];
}

// series: [{name, points: [[step, value], ...]}]
export function lineChart(series, { title = "", log = false, width = 460, height = 240 } = {}) {
  const box = { left: 56, right: width - 10, top: 18, bottom: height - 34 };
  const usable = series.map((s) => ({ ...s, points: s.points.filter(([, v]) => !log || v > 0) }));
  const xs = usable.flatMap((s) => s.points.map((p) => p[0]));
  const ys = usable.flatMap((s) => s.points.map((p) => p[1]));
  const wrap = document.createElement("div");
  wrap.className = "chart";
  wrap.append(Object.assign(document.createElement("div"), { className: "title", textContent: title + (log ? " (log)" : "") }));
  const svg = frame(width, height);
  if (!xs.length) {
    svg.append(el("text", { x: width / 2, y: height / 2, "text-anchor": "middle" }, "no points"));
  } else {
    const [x0, x1] = extent(xs), [y0, y1] = extent(ys);
    const x = scale(x0, x1, box.left, box.right, false), y = scale(y0, y1, box.bottom, box.top, log);
    axes(svg, x, y, box, "step", "");
    usable.forEach((s, i) => {
      const color = PALETTE[i % PALETTE.length];
      const d = s.points.map(([px, py], j) => `${j ? "L" : "M"}${x.map(px).toFixed(1)},${y.map(py).toFixed(1)}`).join("");
      svg.append(el("path", { d, fill: "none", stroke: color, "stroke-width": 1.6, "data-series": s.name }));
      if (s.points.length === 1) {
        const [px, py] = s.points[0];
        svg.append(el("circle", { cx: x.map(px), cy: y.map(py), r: 3, fill: color }));
      }
    });
  }
  wrap.append(svg);
  const legend = document.createElement("div");
  legend.className = "legend";
  usable.forEach((s, i) => {
    const item = document.createElement("span");
    item.textContent = s.name;
    item.style.setProperty("--swatch", PALETTE[i % PALETTE.length]);
    legend.append(item);
  });
  wrap.append(legend);
  return wrap;
}

// points: [{x, y, label, href}] where x may be a number or a category.
export function scatterChart(points, { xLabel = "", yLabel = "", log = false, logX = false, width = 620, height = 360 } = {}) {
  const box = { left: 60, right: width - 14, top: 20, bottom: height - 36 };
  const svg = frame(width, height);
  const usable = points.filter((p) => typeof p.y === "number" && (!log || p.y > 0) && p.x !== undefined && p.x !== null);
  if (!usable.length) {
    svg.append(el("text", { x: width / 2, y: height / 2, "text-anchor": "middle" }, "no runs have both values"));
    return svg;
  }
  const numeric = usable.every((p) => typeof p.x === "number");
  const xLog = logX && numeric && usable.every((p) => p.x > 0);
  const categories = numeric ? [] : [...new Set(usable.map((p) => String(p.x)))].sort();
  const xv = (p) => numeric ? p.x : categories.indexOf(String(p.x));
  const [x0, x1] = extent(usable.map(xv)), [y0, y1] = extent(usable.map((p) => p.y));
  const pad = xLog ? 0 : numeric ? (x1 - x0) * 0.04 || 1 : 0.5;
  const x = scale(x0 - pad, x1 + pad, box.left, box.right, xLog), y = scale(y0, y1, box.bottom, box.top, log);
  if (!numeric) x.ticks = [];
  axes(svg, x, y, box, xLabel, yLabel);
  categories.forEach((c, i) => svg.append(el("text", { x: x.map(i), y: box.bottom + 14, "text-anchor": "middle" }, c)));
  for (const p of usable) {
    const dot = el("circle", { cx: x.map(xv(p)), cy: y.map(p.y), r: 4, fill: PALETTE[0], "fill-opacity": 0.65 });
    dot.append(el("title", {}, `${p.label}\n${xLabel}=${fmt(p.x)} ${yLabel}=${fmt(p.y)}`));
    if (p.href) {
      const link = el("a", { href: p.href });
      link.append(dot);
      svg.append(link);
    } else svg.append(dot);
  }
  return svg;
}

// rows: objects; dims: [{label, get(row) -> number|string}]; the last dim colours the lines.
export function parallelChart(rows, dims, { width = 820, height = 320 } = {}) {
  const svg = frame(width, height);
  const top = 26, bottom = height - 24, left = 50, right = width - 50;
  if (dims.length < 2 || !rows.length) {
    svg.append(el("text", { x: width / 2, y: height / 2, "text-anchor": "middle" }, "choose at least two dimensions"));
    return svg;
  }
  const axesOf = dims.map((d, i) => {
    const values = rows.map(d.get).filter((v) => v !== undefined && v !== null);
    const numeric = values.every((v) => typeof v === "number");
    const cats = numeric ? [] : [...new Set(values.map(String))].sort();
    const [lo, hi] = numeric ? extent(values) : [0, Math.max(cats.length - 1, 1)];
    const s = scale(lo, hi, bottom, top, false);
    const px = left + (right - left) * i / (dims.length - 1);
    return { d, px, at: (v) => v === undefined || v === null ? null : s.map(numeric ? v : cats.indexOf(String(v))), lo, hi, cats };
  });
  const last = axesOf[axesOf.length - 1];
  for (const row of rows) {
    const ys = axesOf.map((a) => a.at(a.d.get(row)));
    if (ys.some((v) => v === null || Number.isNaN(v))) continue;
    const t = last.hi === last.lo ? 0.5 : (last.d.get(row) - last.lo) / (last.hi - last.lo);
    const color = `hsl(${Math.round(220 - 200 * (Number.isFinite(t) ? t : 0.5))} 70% 45%)`;
    svg.append(el("path", { d: axesOf.map((a, i) => `${i ? "L" : "M"}${a.px},${ys[i].toFixed(1)}`).join(""),
                            fill: "none", stroke: color, "stroke-opacity": 0.55 }));
  }
  for (const a of axesOf) {
    svg.append(el("line", { class: "axis", x1: a.px, x2: a.px, y1: top, y2: bottom }));
    svg.append(el("text", { x: a.px, y: top - 10, "text-anchor": "middle" }, a.d.label));
    svg.append(el("text", { x: a.px + 4, y: bottom + 14 }, a.cats.length ? a.cats[0] : fmt(a.lo)));
    svg.append(el("text", { x: a.px + 4, y: top + 4 }, a.cats.length ? a.cats[a.cats.length - 1] : fmt(a.hi)));
  }
  return svg;
}
