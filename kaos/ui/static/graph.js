// The lineage graph: nodes in columns by their place in the data flow (inputs left, outputs right), drawn as SVG,
// with pan (drag) and zoom (wheel). "used" edges run from the input to the job, "produced" from the job out.
const NS = "http://www.w3.org/2000/svg";
const COL = 240, ROW = 58, W = 200, H = 36;

function el(name, attrs = {}, text) {
  const node = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function flow(edge) {
  return edge.rel === "used" ? [edge.target, edge.source] : [edge.source, edge.target];
}

// Longest-path ranks over the flow edges (a DAG; a cycle, which provenance never has, stops at nodes.length rounds).
function ranks(nodes, edges) {
  const rank = new Map(nodes.map((n) => [n.id, 0]));
  for (let round = 0; round < nodes.length; round++) {
    let changed = false;
    for (const e of edges) {
      const [from, to] = flow(e);
      if (rank.has(from) && rank.has(to) && rank.get(to) < rank.get(from) + 1) {
        rank.set(to, rank.get(from) + 1);
        changed = true;
      }
    }
    if (!changed) break;
  }
  return rank;
}

function label(node) {
  const [type, id] = [node.type, node.id.split(":").slice(1).join(":")];
  const room = 27 - type.length; // what a box holds at 11px
  return `${type} ${id.length > room ? id.slice(0, room - 1) + "…" : id}`;
}

// statuses: Map(job id -> status); onSelect(node) on click.
export function lineageGraph(container, answer, statuses, onSelect) {
  const { nodes, edges, root } = answer;
  const rank = ranks(nodes, edges);
  const columns = new Map();
  for (const n of nodes) {
    const r = rank.get(n.id);
    if (!columns.has(r)) columns.set(r, []);
    columns.get(r).push(n);
  }
  const place = new Map();
  for (const [r, list] of columns) {
    list.sort((a, b) => a.id.localeCompare(b.id));
    list.forEach((n, i) => place.set(n.id, { x: r * COL + 20, y: i * ROW + 20 }));
  }
  const svg = el("svg");
  const view = el("g");
  svg.append(view);
  const defs = el("defs");
  const marker = el("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto" });
  marker.append(el("path", { d: "M0,0L10,5L0,10z", fill: "#a4abb9" }));
  defs.append(marker);
  svg.append(defs);
  for (const e of edges) {
    const [from, to] = flow(e).map((id) => place.get(id));
    if (!from || !to) continue;
    const x1 = from.x + W, y1 = from.y + H / 2, x2 = to.x, y2 = to.y + H / 2, mid = (x1 + x2) / 2;
    view.append(el("path", { class: "edge", d: `M${x1},${y1}C${mid},${y1} ${mid},${y2} ${x2},${y2}`, "marker-end": "url(#arrow)" }));
  }
  for (const n of nodes) {
    const p = place.get(n.id);
    const status = n.type === "job" ? statuses.get(n.id.slice(4)) : undefined;
    const failed = status === "FAILED" || status === "KILLED";
    const g = el("g", { class: `node ${n.type}${failed ? " failed" : ""}${n.id === root ? " root" : ""}`,
                        transform: `translate(${p.x},${p.y})`, "data-node": n.id, tabindex: 0 });
    g.append(el("rect", { width: W, height: H }));
    g.append(el("text", { x: 8, y: 15 }, label(n)));
    g.append(el("text", { x: 8, y: 29 }, status ? status : (n.attrs.kind || n.attrs.image || "")));
    g.append(el("title", {}, n.id));
    g.addEventListener("click", (event) => { event.stopPropagation(); onSelect(n); });
    view.append(g);
  }
  container.replaceChildren(svg);
  // Pan and zoom: one transform on the view group. It starts showing everything if that stays readable, else
  // the root at the smallest readable scale.
  const width = Math.max(...[...place.values()].map((p) => p.x)) + W + 20;
  const height = Math.max(...[...place.values()].map((p) => p.y)) + H + 20;
  const fit = Math.min(1, container.clientWidth / width, container.clientHeight / height);
  let scale = Math.max(fit, 0.7), tx, ty;
  if (scale === fit) {
    tx = (container.clientWidth - width * scale) / 2;
    ty = (container.clientHeight - height * scale) / 2;
  } else {
    const start = place.get(root) || { x: 0, y: 0 };
    tx = container.clientWidth / 2 - (start.x + W / 2) * scale;
    ty = container.clientHeight / 2 - (start.y + H / 2) * scale;
  }
  const apply = () => view.setAttribute("transform", `translate(${tx},${ty}) scale(${scale})`);
  apply();
  svg.addEventListener("wheel", (event) => {
    event.preventDefault();
    const box = svg.getBoundingClientRect();
    const mx = event.clientX - box.left, my = event.clientY - box.top;
    const factor = Math.exp(-event.deltaY * 0.0015);
    const next = Math.min(4, Math.max(0.1, scale * factor));
    tx = mx - (mx - tx) * next / scale;
    ty = my - (my - ty) * next / scale;
    scale = next;
    apply();
  }, { passive: false });
  let drag = null;
  svg.addEventListener("pointerdown", (event) => {
    if (event.target.closest(".node")) return;
    drag = { x: event.clientX - tx, y: event.clientY - ty };
    svg.setPointerCapture(event.pointerId);
  });
  svg.addEventListener("pointermove", (event) => {
    if (!drag) return;
    tx = event.clientX - drag.x;
    ty = event.clientY - drag.y;
    apply();
  });
  svg.addEventListener("pointerup", () => { drag = null; });
}
