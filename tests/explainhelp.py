"""Reading `rulegen explain` pages in tests: the diagrams' texts, titles and classes, with the stdlib parser."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser


@dataclass
class Diagram:
    attrs: dict[str, str]
    texts: list[tuple[str, str]] = field(default_factory=list)  # (class, text) of every <text>
    titles: list[str] = field(default_factory=list)  # every <title>, the diagram's own first
    groups: list[dict] = field(default_factory=list)  # every <g>: its attrs and its first <title>
    shapes: list[tuple[str, dict[str, str]]] = field(default_factory=list)  # (tag, attrs) of rect/polygon/path

    def labels(self, cls: str | None = None) -> list[str]:
        return [t for c, t in self.texts if cls is None or c == cls]


@dataclass
class Section:
    attrs: dict[str, str]
    diagrams: list[Diagram] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)  # table rows: {"class": ..., "cells": [...]}
    text: list[str] = field(default_factory=list)  # all text outside the diagrams


VOID = {"rect", "polygon", "path", "meta", "br", "line"}


class PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.sections: list[Section] = []
        self.tags: list[tuple[str, dict[str, str]]] = []  # every start tag of the page
        self.ids: set[str] = set()
        self.text: list[str] = []
        self._svg: Diagram | None = None
        self._stack: list[tuple[str, dict[str, str]]] = []
        self._buf: list[str] | None = None
        self._row: dict | None = None
        self._cell: list[str] | None = None
        self._svg_depth = 0

    def handle_starttag(self, tag, attrs):
        a = {k: (v or "") for k, v in attrs}
        self.tags.append((tag, a))
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "section":
            self.sections.append(Section(a))
        if tag == "svg" and "rg-flow" in a.get("class", ""):
            self._svg = Diagram(a)
            self.sections[-1].diagrams.append(self._svg)
        if self._svg is not None:
            if tag == "g":
                self._svg.groups.append({"attrs": a, "title": None})
            elif tag in ("rect", "polygon", "path"):
                self._svg.shapes.append((tag, a))
            if tag in ("text", "title"):
                self._buf = []
        elif self.sections and tag == "tr":
            self._row = {"class": a.get("class", ""), "cells": []}
        elif self._row is not None and tag in ("td", "th"):
            self._cell = []
        elif self._cell is not None and tag == "li" and self._cell:
            self._cell.append("; ")
        if tag not in VOID:
            self._stack.append((tag, a))

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        while self._stack:
            t, a = self._stack.pop()
            if t == tag:
                break
        if self._svg is not None:
            if tag == "title" and self._buf is not None:
                text = "".join(self._buf)
                self._svg.titles.append(text)
                g = next((g for g in reversed(self._svg.groups) if g["title"] is None), None)
                if g is not None and self._stack and self._stack[-1][0] == "g":
                    g["title"] = text
                parent = self._stack[-1] if self._stack else None
                self._buf = [] if parent and parent[0] == "text" else None
            elif tag == "text" and self._buf is not None:
                self._svg.texts.append((a.get("class", ""), "".join(self._buf)))
                self._buf = None
            if tag == "svg":
                self._svg = None
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row["cells"].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.sections[-1].rows.append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._buf is not None:
            self._buf.append(data)
        elif self._svg is None:
            self.text.append(data)
            if self.sections:
                self.sections[-1].text.append(data)
            if self._cell is not None:
                self._cell.append(data)


def parse_page(html: str) -> PageParser:
    p = PageParser()
    p.feed(html)
    p.close()
    return p
