"""Input files cut into units that can be recognised by hash without being parsed.

The incremental compile (`backends/iptables/incremental.py`) reads every
file again on each run, but parses only what it has not seen: a
`kubectl get -o json` List is cut into its items (msgspec walks the JSON
without building it, ~20 ms for 30 MB), JSON documents written one after
another into those documents (and their List items), multi-document YAML
into its documents (at the `---` lines), anything else is one unit for the
whole file. Each unit is named by a SHA-256 hash of its bytes (128 bits kept) (and of how it is
read), so an unchanged object costs a hash and nothing else.

Decoding a unit gives exactly the objects, places and problems the whole-file
loader (`loader.iter_objects`) would give for that part of the file.
"""

from __future__ import annotations

import re
from hashlib import sha256  # with SHA extensions the fastest hashlib hash on ~1 KB objects
from typing import Any

from . import loader
from .diagnostics import Place, UsageError

ITEM, FILE, DOCS, JSON_DOC = "item", "file", "docs", "jsondoc"

# A YAML document marker alone on its line. PyYAML ends whatever it is
# reading at such a line (a `---` at column 0 is never content), so cutting
# there parses each part exactly as the whole file would. Files with
# directives (`%YAML`) or document-end markers (`...`) are not cut.
_DOC_START = re.compile(rb"^---[ \t]*\r?$", re.M)
_NO_CUT = re.compile(rb"^(?:\xef\xbb\xbf)?(?:%|\.\.\.)", re.M)  # a BOM may come first


class Unit:
    """One part of one input file: a JSON List item or document, some YAML documents, or a whole file."""

    __slots__ = ("file", "how", "data", "digest", "item", "text", "seq", "doc", "kind", "api_version")

    def __init__(self, file: str, how: str, data: Any, item: int = 0, text: str | None = None,
                 doc: int = 1, kind: str | None = None, api_version: str | None = None):
        self.file = file  # the name shown in messages
        self.seq = 0  # which input file (the same file may be given twice)
        self.how = how
        self.data = data  # bytes-like
        self.item = item  # ITEM: 1-based position in the List
        self.text = text  # FILE, DOCS: the whole file's text
        self.doc = doc  # ITEM, JSON_DOC: which JSON document of the file (1-based)
        self.kind = kind  # ITEM: the kind its typed List gives it (`ServiceList`: Service)
        self.api_version = api_version
        # How a unit is read is part of its name: the same bytes as a List item,
        # a YAML part, or a whole `.json` / other file can mean different things;
        # and an item of a ServiceList is not the same object as one of a NodeList.
        prefix = ("j" if file.endswith(".json") else "f") if how == FILE else _PREFIX[how]
        h = sha256(data)
        if kind is not None:
            h.update(f"\0{kind}\0{api_version or ''}".encode())
        self.digest = prefix + h.hexdigest()[:32]

    def decode(self, before: int = 0) -> tuple[list[tuple[Place, Any]], int]:
        """This unit's objects with their places, and how many documents it holds.

        BEFORE: documents of the same file ahead of this unit (DOCS units).
        Raises UsageError as the whole-file loader would for text that is not
        YAML/JSON at all.
        """
        if self.how == ITEM:
            place = Place(self.file, self.doc, item=self.item)
            try:
                obj = loader.decode_item(self.data)
            except RecursionError:
                raise UsageError(f"{place}: {loader.JSON_TOO_DEEP}") from None
            return [(place, loader.typed(obj, self.kind, self.api_version))], 1
        if self.how == JSON_DOC:
            doc = loader.json_document(self.file, self.data)
            return list(loader.objects_of(self.file, [doc], self.doc - 1)), 1
        if self.how == FILE:
            text = self.text if self.text is not None else bytes(self.data).decode()
            docs = loader.read_documents(self.file, text)
        else:
            try:
                docs = loader.read_yaml(self.file, bytes(self.data).decode())
            except UsageError:
                # Say where in the whole file, as the whole-file loader would.
                loader.read_documents(self.file, self.text or "")
                raise
        n = len(docs)
        return list(loader.objects_of(self.file, docs, before)), n


_PREFIX = {ITEM: "i", DOCS: "y", JSON_DOC: "d"}


def read_units(paths: list[str]) -> list[Unit]:
    """Every input file, cut into units, in input order."""
    out: list[Unit] = []
    for seq, name in enumerate(loader.expand_paths(paths)):
        shown = "<stdin>" if name == "-" else name
        for u in cut(shown, loader.read_text(name)):
            u.seq = seq
            out.append(u)
    return out


def cut(shown: str, text: str) -> list[Unit]:
    data = text.encode()
    if loader.looks_like_json(shown, text):
        parts = loader.json_parts(shown, text, data)
        if parts is None or (len(parts) == 1 and parts[0].items is None):
            return [Unit(shown, FILE, data, text=text)]
        out: list[Unit] = []
        for i, p in enumerate(parts, 1):
            if p.items is None:
                out.append(Unit(shown, JSON_DOC, p.data, doc=i))
            else:
                out += [Unit(shown, ITEM, raw, item=j, doc=i, kind=p.kind, api_version=p.api_version)
                        for j, raw in enumerate(p.items, 1)]
        return out
    if _NO_CUT.search(data):
        return [Unit(shown, FILE, data, text=text)]
    starts = [m.start() for m in _DOC_START.finditer(data)]
    if not starts or starts[0] != 0:
        starts.insert(0, 0)
    starts.append(len(data))
    view = memoryview(data)
    return [Unit(shown, DOCS, view[a:b], text=text) for a, b in zip(starts, starts[1:]) if b > a]
