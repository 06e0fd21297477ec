"""Provenance graph renderings: pure functions from a lineage graph ({root, nodes, edges}) to text, plus the one
function that runs Graphviz' `dot` to make images."""
from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

FORMATS = ("text", "json", "dot", "mermaid", "png", "svg")
IMAGE_FORMATS = ("png", "svg")
# (DOT shape, fill colour, Mermaid node brackets) per node type.
_STYLE = {
    "snapshot": ("cylinder", "#dbeafe", ("[(", ")]")),
    "environment": ("component", "#e5e7eb", ("[[", "]]")),
    "job": ("box", "#fde68a", ("[", "]")),
    "model": ("box3d", "#bbf7d0", ("([", "])")),
    "version": ("note", "#ddd6fe", ("[/", "/]")),
    "endpoint": ("doubleoctagon", "#fecaca", ("{{", "}}")),
    "capture": ("folder", "#fed7aa", ("[(", ")]")),
}
_DEFAULT_STYLE = ("ellipse", "#ffffff", ("(", ")"))


class RenderError(Exception):
    pass


def merge_pages(pages: list[dict[str, Any]]) -> dict[str, Any]:
    """One graph from the pages of a paged lineage walk (nodes by id, edges by (source, rel, target))."""
    nodes: dict[str, dict[str, Any]] = {}
    edges: dict[tuple[str, str, str], dict[str, Any]] = {}
    for page in pages:
        nodes.update({n["id"]: n for n in page["nodes"]})
        edges.update({(e["source"], e["rel"], e["target"]): e for e in page["edges"]})
    first = pages[0]
    return {"root": first["root"], "direction": first["direction"], "nodes": list(nodes.values()),
            "edges": list(edges.values()), "requests": sum(int(p.get("requests", 0)) for p in pages),
            "pages": len(pages)}


def short_label(node: dict[str, Any]) -> str:
    """`snapshot:1a2b3c4d5e6f… (data)`: long content ids are cut to 12 characters."""
    kind, _, ident = node["id"].partition(":")
    if len(ident) > 40:
        ident = ident[:12] + "…"
    attrs = node.get("attrs") or {}
    extra = attrs.get("kind") or attrs.get("image") or ""
    return f"{kind}:{ident}" + (f" ({extra})" if extra else "")


def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _nodes_with_missing(graph: dict[str, Any]) -> list[dict[str, Any]]:
    """The graph's nodes, plus any an edge names that the (possibly truncated) graph did not include."""
    nodes = {n["id"]: n for n in graph["nodes"]}
    for edge in graph["edges"]:
        for end in (edge["source"], edge["target"]):
            nodes.setdefault(end, {"id": end, "type": end.split(":", 1)[0], "attrs": {}})
    return sorted(nodes.values(), key=lambda n: str(n["id"]))


def _edges(graph: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted(graph["edges"], key=lambda e: (e["source"], e["rel"], e["target"]))


def to_json(graph: dict[str, Any]) -> str:
    return json.dumps(graph, indent=2, sort_keys=True) + "\n"


def to_dot(graph: dict[str, Any]) -> str:
    """Graphviz DOT: node ids are the provenance ids; shape and colour by type; edges labelled by rel."""
    lines = ["digraph provenance {", "  rankdir=LR;",
             '  node [style="filled", fontname="Helvetica", fontsize=10];',
             '  edge [fontname="Helvetica", fontsize=9];']
    for node in _nodes_with_missing(graph):
        shape, fill, _ = _STYLE.get(node["type"], _DEFAULT_STYLE)
        width = ", penwidth=2" if node["id"] == graph.get("root") else ""
        lines.append(f"  {_dot_quote(node['id'])} [label={_dot_quote(short_label(node))}, shape={shape}, "
                     f"fillcolor={_dot_quote(fill)}, tooltip={_dot_quote(node['id'])}{width}];")
    for edge in _edges(graph):
        lines.append(f"  {_dot_quote(edge['source'])} -> {_dot_quote(edge['target'])} "
                     f"[label={_dot_quote(edge['rel'])}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _mermaid_text(text: str) -> str:
    return text.replace('"', "#quot;")


def to_mermaid(graph: dict[str, Any]) -> str:
    """Mermaid flowchart (`graph LR`); node ids n0, n1, ... because Mermaid ids cannot hold ':'."""
    nodes = _nodes_with_missing(graph)
    ids = {node["id"]: f"n{i}" for i, node in enumerate(nodes)}
    lines = ["graph LR"]
    for node in nodes:
        opening, closing = _STYLE.get(node["type"], _DEFAULT_STYLE)[2]
        lines.append(f'  {ids[node["id"]]}{opening}"{_mermaid_text(short_label(node))}"{closing}')
    for edge in _edges(graph):
        lines.append(f"  {ids[edge['source']]} -->|{_mermaid_text(edge['rel'])}| {ids[edge['target']]}")
    for kind, (_, fill, _) in _STYLE.items():
        members = [ids[n["id"]] for n in nodes if n["type"] == kind]
        if members:
            lines.append(f"  classDef {kind} fill:{fill}")
            lines.append(f"  class {','.join(members)} {kind}")
    return "\n".join(lines) + "\n"


def dot_binary() -> str:
    found = shutil.which("dot")
    if not found:
        raise RenderError("png and svg need Graphviz' `dot` program, which is not installed: "
                          "apt-get install graphviz (Debian/Ubuntu), brew install graphviz (macOS); "
                          "or use --format dot / --format mermaid")
    return found


def to_image(graph: dict[str, Any], fmt: str) -> bytes:
    """PNG or SVG bytes, rendered by `dot -T<fmt>` from to_dot(graph)."""
    if fmt not in IMAGE_FORMATS:
        raise RenderError(f"image format must be one of {', '.join(IMAGE_FORMATS)}")
    done = subprocess.run([dot_binary(), f"-T{fmt}"], input=to_dot(graph).encode(), capture_output=True,
                          timeout=120, check=False)
    if done.returncode != 0:
        raise RenderError(f"dot failed ({done.returncode}): {done.stderr.decode(errors='replace').strip()}")
    return done.stdout


def render(graph: dict[str, Any], fmt: str) -> bytes:
    """The graph in one of FORMATS other than text (the rich tree lives with the CLI)."""
    if fmt in IMAGE_FORMATS:
        return to_image(graph, fmt)
    texts = {"json": to_json, "dot": to_dot, "mermaid": to_mermaid}
    if fmt not in texts:
        raise RenderError(f"format must be one of {', '.join(FORMATS)}")
    return texts[fmt](graph).encode()
