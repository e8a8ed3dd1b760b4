"""A laid-out flow graph as inline SVG: shapes, text, titles and labels, with no colour-only signal.

Each kind of node has its own shape as well as its colour: clients are
pills, entry points boxes with a thick left edge, chains plain boxes in
the chain font, hops to other nodes dashed boxes, endpoints rounded boxes
(dashed when they run on another node), stops octagons hatched and
named REJECT or DROP, "not captured" dotted boxes. Masqueraded edges are
dashed and labelled MASQ; edges of a scenario that behaves differently in
the other mode are thick and labelled ≠. Every node is a focusable group
with an aria-label and a <title> holding its whole story (the scenarios
through it, the rule that stopped it, the side calls), so the picture
reads with a keyboard and a screen reader too.

The markers and patterns are defined once per page (`DEFS`), and every
reference is to an id of the page itself: the SVG names no URL.
Coordinates are rounded to one decimal, so the text is the same on every
run.
"""

from __future__ import annotations

from html import escape

from .graph import Edge, Graph
from .layout import FONT, LINE, PAD_Y, SMALL, SUB_LINE, Box, Layout

DEFS = """<svg class="rg-defs" width="0" height="0" aria-hidden="true" focusable="false">
<defs>
<marker id="rg-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" class="rg-arrowhead"/></marker>
<marker id="rg-arrow-masq" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" class="rg-arrowhead-masq"/></marker>
<marker id="rg-arrow-diff" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="6" markerHeight="6" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" class="rg-arrowhead-diff"/></marker>
<pattern id="rg-hatch" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="6" height="6" class="rg-hatch-bg"/><line x1="0" y1="0" x2="0" y2="6" class="rg-hatch-line"/></pattern>
</defs>
</svg>"""


def _f(v: float) -> str:
    s = f"{v:.1f}"
    return s[:-2] if s.endswith(".0") else s


def _octagon(b: Box) -> str:
    c = min(10.0, b.h / 3)
    x0, y0, x1, y1 = b.x, b.y, b.x + b.w, b.y + b.h
    pts = [(x0 + c, y0), (x1 - c, y0), (x1, y0 + c), (x1, y1 - c), (x1 - c, y1), (x0 + c, y1), (x0, y1 - c), (x0, y0 + c)]
    return " ".join(f"{_f(x)},{_f(y)}" for x, y in pts)


def _shape(b: Box) -> str:
    n = b.node
    x, y, w, h = _f(b.x), _f(b.y), _f(b.w), _f(b.h)
    k = n.kind
    if k in ("stop", "error"):
        return f'<polygon class="rg-shape" points="{_octagon(b)}"/>'
    if k == "client":
        return f'<rect class="rg-shape" x="{x}" y="{y}" width="{w}" height="{h}" rx="{_f(min(b.h / 2, 14))}"/>'
    if k == "entry":
        return (f'<rect class="rg-shape" x="{x}" y="{y}" width="{w}" height="{h}" rx="2"/>'
                f'<rect class="rg-bar" x="{x}" y="{y}" width="4" height="{h}"/>')
    if k == "endpoint":
        return f'<rect class="rg-shape" x="{x}" y="{y}" width="{w}" height="{h}" rx="8"/>'
    return f'<rect class="rg-shape" x="{x}" y="{y}" width="{w}" height="{h}" rx="2"/>'


def _node(b: Box) -> str:
    n = b.node
    cls = f"rg-node rg-{n.kind}"
    if n.kind == "endpoint":
        cls += {True: " rg-local", False: " rg-remote"}.get(n.local, " rg-unknown")
    if n.differs:
        cls += " rg-differs"
    # The <title> is the group's accessible name (SVG-AAM): the label's words, then the story.
    name = " ".join([n.label, *n.sub, *n.badges]) + ". " + n.title
    out = [f'<g class="{cls}" tabindex="0" role="img"><title>{escape(name)}</title>']
    if n.differs:
        out.append(f'<rect class="rg-diff-ring" x="{_f(b.x - 4)}" y="{_f(b.y - 4)}" width="{_f(b.w + 8)}" '
                   f'height="{_f(b.h + 8)}" rx="6"/>')
    out.append(_shape(b))
    cx = b.x + b.w / 2
    y = b.y + PAD_Y + FONT
    for line in b.lines:
        out.append(f'<text class="rg-label" x="{_f(cx)}" y="{_f(y)}">{escape(line)}</text>')
        y += LINE
    y += SMALL - FONT
    for line in b.sub:
        out.append(f'<text class="rg-sub" x="{_f(cx)}" y="{_f(y)}">{escape(line)}</text>')
        y += SUB_LINE
    for j, line in enumerate(b.badges):  # each with its own title: a side call, "≠ differs"
        t = n.badge_titles[j] if j < len(n.badge_titles) else line
        out.append(f'<text class="rg-badge" x="{_f(cx)}" y="{_f(y)}"><title>{escape(t)}</title>'
                   f"{escape(line)}</text>")
        y += SUB_LINE
    out.append("</g>")
    return "".join(out)


def _cubic(p0: float, p1: float, p2: float, p3: float, t: float) -> float:
    u = 1 - t
    return u * u * u * p0 + 3 * u * u * t * p1 + 3 * u * t * t * p2 + t * t * t * p3


def _ports(g: Graph, lay: Layout) -> dict[tuple[str, str, bool], tuple[float, float]]:
    """Where each edge leaves its source and meets its target: spread over the node's height, in row order."""
    outs: dict[str, list[tuple[float, Edge]]] = {}
    ins: dict[str, list[tuple[float, Edge]]] = {}
    for k, e in g.edges.items():
        lanes = lay.lanes.get(k)
        toward = lanes[0].y if lanes else lay.boxes[e.dst].cy
        back = lanes[-1].y if lanes else lay.boxes[e.src].cy
        outs.setdefault(e.src, []).append((toward, e))
        ins.setdefault(e.dst, []).append((back, e))
    y0: dict[tuple[str, str, bool], float] = {}
    y1: dict[tuple[str, str, bool], float] = {}
    for ends, into in ((outs, y0), (ins, y1)):
        for nid, es in ends.items():
            b = lay.boxes[nid]
            es.sort(key=lambda t: (t[0], t[1].masq))
            for i, (_, e) in enumerate(es):
                into[(e.src, e.dst, e.masq)] = b.y + b.h * (i + 1) / (len(es) + 1)
    return {k: (y0[k], y1[k]) for k in y0}


def _edge(e: Edge, lay: Layout, ys: tuple[float, float]) -> str:
    s, d = lay.boxes[e.src], lay.boxes[e.dst]
    # The points it passes: out of the source, across each skipped column in its lane, into the target.
    pts = [(s.x + s.w, ys[0])]
    for ln in lay.lanes.get((e.src, e.dst, e.masq), ()):
        pts += [(ln.x0, ln.y), (ln.x1, ln.y)]
    pts.append((d.x - 2, ys[1]))
    path = [f"M{_f(pts[0][0])},{_f(pts[0][1])}"]
    for i in range(1, len(pts)):
        (xa, ya), (xb, yb) = pts[i - 1], pts[i]
        if i % 2 == 1:  # between two columns: an S-curve
            mx = (xa + xb) / 2
            path.append(f"C{_f(mx)},{_f(ya)} {_f(mx)},{_f(yb)} {_f(xb)},{_f(yb)}")
        else:  # across a skipped column: straight
            path.append(f"L{_f(xb)},{_f(yb)}")
    cls = "rg-edge" + (" rg-masq" if e.masq else "") + (" rg-edge-differs" if e.differs else "")
    marker = "rg-arrow-diff" if e.differs else ("rg-arrow-masq" if e.masq else "rg-arrow")
    label = " ".join(x for x in (e.label, "≠" if e.differs else "") if x)
    out = [f'<g class="{cls}" role="img"><title>{escape(e.title)}</title>',
           f'<path d="{" ".join(path)}" marker-end="url(#{marker})"/>']
    if label:
        # On the last curve, near the target, where the fans of a chain are apart.
        (xa, ya), (xb, yb) = pts[-2], pts[-1]
        mx = (xa + xb) / 2
        lx, ly = _cubic(xa, mx, mx, xb, 0.72), _cubic(ya, ya, yb, yb, 0.72)
        out.append(f'<text class="rg-elabel" x="{_f(lx)}" y="{_f(ly - 3)}">{escape(label)}</text>')
    out.append("</g>")
    return "".join(out)


def render(g: Graph, lay: Layout, title: str, desc: str, ident: str) -> str:
    """The whole <svg> of one diagram; IDENT makes its title ids unique on the page."""
    ports = _ports(g, lay)
    parts = [f'<svg class="rg-flow" role="group" width="{_f(lay.width)}" height="{_f(lay.height)}" '
             f'viewBox="0 0 {_f(lay.width)} {_f(lay.height)}" aria-labelledby="{ident}-t {ident}-d">',
             f'<title id="{ident}-t">{escape(title)}</title><desc id="{ident}-d">{escape(desc)}</desc>',
             '<g class="rg-edges">']
    parts += [_edge(e, lay, ports[(e.src, e.dst, e.masq)]) for e in g.edge_list()]
    parts.append('</g><g class="rg-nodes">')
    parts += [_node(lay.boxes[n.id]) for n in g.node_list()]
    parts.append("</g></svg>")
    return "".join(parts)
