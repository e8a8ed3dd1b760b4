"""A layered layout of one flow graph: columns from clients to endpoints, rows by barycentre, in code.

Columns are fixed by kind, left to right: clients, entry points, the
chains (each at one more than the deepest chain that hands it on: a
longest-path layering, so KUBE-SVC sits right of KUBE-EXT when a NodePort
passes through both), the hops to other nodes, then every end (endpoints,
stops, "not captured") in the last column. Within a column, clients and
entry points keep their fixed order (the order a guide lists them);
chains and ends are ordered by the mean row of what leads to them (one
barycentre sweep, ties by first appearance), which keeps the fans of a
KUBE-SVC chain uncrossed. Rows are then placed top-down, each node as near
the mean height of its predecessors as the nodes above it allow.

Text is measured as monospace (every glyph 0.6 em wide), the font the page
asks for, so sizes need no browser; nothing is random and nothing depends
on dict order beyond insertion, so the same graph gives the same picture.
A graph of this kind has no cycle; should a saved rule file make one, the
back edge is left out of the layering (it is still drawn).
"""

from __future__ import annotations

from dataclasses import dataclass

from .graph import Graph, Node

FONT = 12.0  # px, the labels
SMALL = 10.5  # px, sub-lines and badges
CHAR = 0.6  # em per glyph in a monospace font
PAD_X, PAD_Y = 10.0, 6.0
LINE = 15.0  # px per label line
SUB_LINE = 13.0
COL_GAP = 52.0  # room for the edge labels between columns
ROW_GAP = 16.0
LANE_GAP = 10.0  # between a lane and what is below it
MARGIN = 16.0
MAX_CHARS = 48  # longer labels wrap (nftables' chain names can be long)

KIND_RANK = {"client": 0, "entry": 1}
END_KINDS = ("endpoint", "stop", "pass", "error")


@dataclass
class Box:
    node: Node
    col: int
    x: float
    y: float
    w: float
    h: float
    lines: list[str]  # the label, wrapped
    sub: list[str]  # the sub-lines, wrapped
    badges: list[str]  # one line each

    @property
    def cy(self) -> float:
        return self.y + self.h / 2


@dataclass
class Lane:
    """Where an edge crosses a column it skips: from x0 to x1 at height y."""

    col: int
    x0: float
    x1: float
    y: float


@dataclass
class Layout:
    boxes: dict[str, Box]
    lanes: dict[tuple[str, str, bool], list[Lane]]  # edge key → its lanes, left to right
    width: float
    height: float
    columns: int


def wrap(text: str, width: int = MAX_CHARS) -> list[str]:
    """Break TEXT into lines of at most WIDTH glyphs, after a '/', '_', '-' or blank where one is near."""
    out: list[str] = []
    while len(text) > width:
        cut = max(text.rfind(c, width // 2, width) for c in "/_- ")
        cut = cut + 1 if cut > 0 else width
        out.append(text[:cut].rstrip())
        text = text[cut:].lstrip()
    out.append(text)
    return out


def text_width(text: str, size: float) -> float:
    return len(text) * size * CHAR


def _measure(n: Node) -> tuple[float, float, list[str], list[str], list[str]]:
    lines = wrap(n.label)
    sub = [x for s in n.sub for x in wrap(s)]
    small = [*sub, *n.badges]
    w = max([text_width(t, FONT) for t in lines] + [text_width(t, SMALL) for t in small]) + 2 * PAD_X
    if n.kind in ("stop", "error"):
        w += 16  # the octagon's cut corners
    h = len(lines) * LINE + len(small) * SUB_LINE + 2 * PAD_Y
    return w, h, lines, sub, list(n.badges)


def columns(g: Graph) -> dict[str, int]:
    """Node id → column."""
    col: dict[str, int] = {}
    chains = [n.id for n in g.node_list() if n.kind == "chain"]
    preds: dict[str, list[str]] = {n: [] for n in chains}
    for e in g.edge_list():
        if e.dst in preds and (e.src in preds or g.nodes[e.src].kind == "entry"):
            if e.src not in preds[e.dst]:
                preds[e.dst].append(e.src)
    depth: dict[str, int] = {}
    visiting: set[str] = set()

    def d(nid: str) -> int:
        if nid in depth:
            return depth[nid]
        visiting.add(nid)
        best = 0
        for p in preds[nid]:
            if p in preds and p not in visiting:  # a chain before it (a back edge is skipped)
                best = max(best, d(p) + 1)
        visiting.discard(nid)
        depth[nid] = best
        return best

    for nid in chains:
        d(nid)
    last_chain = 1 + (max(depth.values()) + 1 if depth else 0)
    has_hops = any(n.kind == "hop" for n in g.node_list())
    for n in g.node_list():
        if n.kind in KIND_RANK:
            col[n.id] = KIND_RANK[n.kind]
        elif n.kind == "chain":
            col[n.id] = 2 + depth[n.id]
        elif n.kind == "hop":
            col[n.id] = last_chain + 1
        else:
            col[n.id] = last_chain + 1 + (1 if has_hops else 0)
    return col


def layout(g: Graph) -> Layout:
    col = columns(g)
    ncols = max(col.values()) + 1 if col else 0
    order = {n.id: i for i, n in enumerate(g.node_list())}
    kind = {n.id: n.kind for n in g.node_list()}
    preds: dict[str, list[str]] = {n.id: [] for n in g.node_list()}
    succs: dict[str, list[str]] = {n.id: [] for n in g.node_list()}
    cols: list[list[str]] = [[] for _ in range(ncols)]
    for n in g.node_list():
        cols[col[n.id]].append(n.id)

    def link(a: str, b: str) -> None:
        if b not in succs[a]:
            succs[a].append(b)
        if a not in preds[b]:
            preds[b].append(a)

    # An edge across several columns gets a lane in each column between: a point placed like a
    # node, so the edge passes beside the chains it skips instead of under them.
    lane_ids: dict[tuple[str, str, bool], list[str]] = {}
    for k, e in g.edges.items():
        a, b = col[e.src], col[e.dst]
        if b - a <= 1:
            link(e.src, e.dst)
            continue
        ids = []
        prev = e.src
        for c in range(a + 1, b):
            vid = f"~{len(order)}"
            order[vid], kind[vid] = len(order), "lane"
            preds[vid], succs[vid] = [], []
            cols[c].append(vid)
            col[vid] = c
            link(prev, vid)
            ids.append(vid)
            prev = vid
        link(prev, e.dst)
        lane_ids[k] = ids

    # Order: the fixed columns as given, the others by the mean place of their predecessors;
    # a lane and a hop to another node pass their predecessor's place on.
    pos: dict[str, float] = {}
    for c, ids in enumerate(cols):
        if c > 1:
            def key(nid: str) -> tuple[float, int, int]:
                ps = [pos[p] for p in preds[nid] if p in pos]
                return (sum(ps) / len(ps) if ps else float("inf"), kind[nid] == "lane", order[nid])
            ids.sort(key=key)
        for i, nid in enumerate(ids):
            ps = [pos[p] for p in preds[nid] if p in pos]
            pos[nid] = sum(ps) / len(ps) if kind[nid] in ("hop", "lane") and ps else i / max(len(ids), 1)

    # Sizes and x (a lane takes no width).
    sizes = {n.id: _measure(n) for n in g.node_list()}
    widths = [max((sizes[nid][0] for nid in ids if nid in sizes), default=0.0) for ids in cols]
    xs: list[float] = []
    x = MARGIN
    for w in widths:
        xs.append(x)
        x += w + COL_GAP
    width = x - COL_GAP + MARGIN if cols else 2 * MARGIN

    # Rows: the entry column stacked; the clients beside what they reach; the rest beside what leads to them.
    boxes: dict[str, Box] = {}
    lane_y: dict[str, float] = {}

    def cy(nid: str) -> float | None:
        if nid in boxes:
            return boxes[nid].cy
        return lane_y.get(nid)

    def place(c: int, want: dict[str, float]) -> None:
        top = MARGIN
        for nid in cols[c]:
            if nid not in sizes:  # a lane
                y = max(top, want.get(nid, top))
                lane_y[nid] = y
                top = y + LANE_GAP
                continue
            w, h, lines, sub, badges = sizes[nid]
            y = max(top, want.get(nid, top + h / 2) - h / 2)
            boxes[nid] = Box(g.nodes[nid], c, xs[c] + (widths[c] - w) / 2, y, w, h, lines, sub, badges)
            top = y + h + ROW_GAP

    def mean(ids: list[str]) -> float | None:
        ys = [v for i in ids if (v := cy(i)) is not None]
        return sum(ys) / len(ys) if ys else None

    if ncols > 1:
        place(1, {})
        place(0, {nid: m for nid in cols[0] if (m := mean(succs[nid])) is not None})
    for c in range(2, ncols):
        place(c, {nid: m for nid in cols[c] if (m := mean(preds[nid])) is not None})
    if ncols == 1:
        place(0, {})
    lanes = {k: [Lane(col[v], xs[col[v]], xs[col[v]] + widths[col[v]], lane_y[v]) for v in ids]
             for k, ids in lane_ids.items()}
    height = max([b.y + b.h for b in boxes.values()] + [y for y in lane_y.values()], default=0.0) + MARGIN
    return Layout(boxes, lanes, width, height, ncols)
