"""Files → model: read YAML/JSON, check every field rulegen uses, report the rest.

Owns the step from user files to `model.Inputs`. Accepts files, directories
(their `*.yaml`, `*.yml`, `*.json`, sorted by name) and `-` for standard
input; multi-document YAML, JSON documents one after another, `kind: List`
and the API's typed lists (`ServiceList`: items without a kind take it from
the list). JSON goes through msgspec (a `kubectl get -o json` List one item
at a time; `json` words the errors), YAML through PyYAML's C loader. Every
input is held to a size, a nesting depth and (YAML) an alias-expansion bound
before it can cost much (see "limits" below).

kube-proxy only ever sees objects the API server validated, and it still
drops what it cannot use (an unparsable IP, an other-family address). The
loader does the same and reports each thing it leaves out with its place
(`svc.yaml: document 2 (Service default/web): spec.ports[0].nodePort: 99999
is not a valid port`), never raising. Only input that cannot be used at all
raises `UsageError`: a file that cannot be read, is not YAML/JSON, or is past
one of the limits, and a kube-proxy ConfigMap whose configuration is not YAML.

Names are text that reaches the rules (`--comment default/web:http`), so
they get the API server's own checks (`apinames`): an object with a name,
namespace, port name, label or nodeName the API server would refuse is left
out whole, as kube-proxy would never see it, and reported with the lint
slug `refused-name`. Messages show such names escaped (`'web\n-A INPUT'`),
so a report line stays one line.
"""

from __future__ import annotations

import json
import os
import re
import stat
import sys
from sys import intern as _intern
from pathlib import Path
from typing import Any, Iterable, Iterator

import msgspec
import yaml

from . import apinames
from .apinames import shown
from .backends import modes
from .diagnostics import Place, Report, UsageError
from .ipaddr import host_bits, host_bits_note, parse_cidr, parse_ip
from .model import (
    Endpoint,
    EndpointSlice,
    Inputs,
    LBIngress,
    Node,
    Pod,
    PodTemplate,
    ProxyConfig,
    Service,
    ServiceCIDR,
    ServicePort,
    SlicePort,
    Workload,
)

try:  # the C loader is ~10x faster; fall back so a build without libyaml still works
    _YamlLoader = yaml.CSafeLoader
except AttributeError:  # pragma: no cover
    _YamlLoader = yaml.SafeLoader

PROTOCOLS = ("TCP", "UDP", "SCTP")
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")
IP_FAMILY_POLICIES = ("SingleStack", "PreferDualStack", "RequireDualStack")
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet")
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
ZONE_LABEL = "topology.kubernetes.io/zone"
INPUT_SUFFIXES = (".yaml", ".yml", ".json")
# Files that live beside inputs in fixture folders but are not Kubernetes objects.
NOT_INPUTS = frozenset({"trace.yaml", "trace.yml", "trace.json"})


# --------------------------------------------------------------------------- limits

# Input files are hostile until read: three bounds keep a crafted one from
# taking the machine with it, each an exit-2 message naming the file (and
# the document), reached in a fraction of a second.
#
# Size. A file, or standard input, over the limit is refused before it is
# read. `rulegen bench gen --services 10000 --endpoints 10` writes 31 MB of
# YAML (31 MB of JSON); `kubectl get -o yaml` of a cluster that size, with its
# managedFields and annotations, is about twice that. 128 MiB holds both with
# room to spare; RULEGEN_MAX_INPUT_SIZE raises (or, at 0, lifts) the limit.
# A YAML file that is one big `kind: List` document costs ~45 bytes of memory
# per byte read while it is parsed, so the limit is also what bounds memory.
#
# Depth. No Kubernetes object is nested more than ~40 levels (a CRD's
# openAPIV3Schema is the deepest, two levels per nested property); 200 is
# far beyond any of them and well inside Python's recursion limit for the
# builders below (one or two frames a level). libyaml itself stops at 1000.
# JSON is decoded in C, where checking every document's depth would cost as
# much as decoding it: msgspec and json stop at the interpreter's recursion
# limit (some 900 levels), and that stop is reported like the YAML one.
#
# Aliases. A YAML alias repeats its anchor's whole subtree; ten aliases of
# ten aliases of ... ("billion laughs") make a few hundred bytes expand to
# billions of nodes. A document whose aliases add more nodes than the
# document holds itself, and more than ALIAS_ALLOWANCE, is refused before
# anything is built. kubectl (through go-yaml) refuses such documents too,
# and recursive aliases, which no Kubernetes object can hold.

MAX_INPUT_ENV = "RULEGEN_MAX_INPUT_SIZE"
MAX_INPUT_DEFAULT = 128 << 20
MAX_DEPTH = 200
ALIAS_ALLOWANCE = 100_000
TOO_DEEP = f"nested deeper than {MAX_DEPTH} levels"
JSON_TOO_DEEP = "nested deeper than rulegen can read"

_SIZE = re.compile(r"\s*(\d+)\s*(?:([kmg])i?b?|b?)\s*", re.I)
_SHIFTS = {"k": 10, "m": 20, "g": 30}


def max_input_size() -> int:
    """The most bytes read from one input (0: no limit): RULEGEN_MAX_INPUT_SIZE, else 128 MiB."""
    raw = os.environ.get(MAX_INPUT_ENV, "")
    if not raw.strip():
        return MAX_INPUT_DEFAULT
    m = _SIZE.fullmatch(raw)
    if m is None:
        raise UsageError(f"{MAX_INPUT_ENV}: {raw!r} is not a size (bytes, or a number with K, M or G; 0 for no limit)")
    return int(m.group(1)) << _SHIFTS.get((m.group(2) or "").lower(), 0)


def _size_text(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            v = n / (1 << shift)
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{n} bytes"


def _too_large(name: str, limit: int, size: int | None = None) -> UsageError:
    have = f"{_size_text(size)}, " if size is not None else ""
    return UsageError(f"{name}: {have}more than the {_size_text(limit)} rulegen reads from one input "
                      f"({MAX_INPUT_ENV}=SIZE raises the limit)")


# --------------------------------------------------------------------------- files


def is_input(path: Path) -> bool:
    """A file a directory argument contributes: an input suffix, not a project file."""
    return path.is_file() and path.suffix in INPUT_SUFFIXES and path.name not in NOT_INPUTS


def expand_paths(paths: Iterable[str]) -> list[str]:
    """Files in the order given; a directory contributes its inputs sorted by name."""
    out: list[str] = []
    for p in paths:
        if p == "-":
            out.append(p)
            continue
        path = Path(p)
        if path.is_dir():
            out.extend(str(c) for c in sorted(path.iterdir()) if is_input(c))
        elif path.exists():
            out.append(p)
        else:
            raise UsageError(f"{p}: no such file or directory")
    return out


def read_text(name: str) -> str:
    """One input's text, refused (UsageError) when it is larger than `max_input_size()` or not UTF-8."""
    limit = max_input_size()
    if name == "-":
        # As bytes, decoded strictly like a file: the text stream would turn bad
        # bytes into lone surrogates (C/POSIX locale) that no parser accepts.
        raw = getattr(sys.stdin, "buffer", None)
        data = (raw or sys.stdin).read(limit + 1 if limit else -1)
        if limit and len(data) > limit:
            raise _too_large("<stdin>", limit)
        if raw is None:
            return data
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise UsageError("<stdin>: not a text file (YAML or JSON expected)") from None
    try:
        with open(name, encoding="utf-8") as f:
            if not limit:
                return f.read()
            st = os.fstat(f.fileno())
            if stat.S_ISREG(st.st_mode):
                if st.st_size > limit:
                    raise _too_large(name, limit, st.st_size)
                return f.read()
            # A pipe or a device (`<(kubectl get ...)`): no size to check first.
            text = f.read(limit + 1)
            if len(text) > limit:
                raise _too_large(name, limit)
            return text
    except UnicodeDecodeError:
        raise UsageError(f"{name}: not a text file (YAML or JSON expected)") from None
    except OSError as e:
        raise UsageError(f"{name}: cannot read: {e.strerror}") from None


_FIRST_CHAR = re.compile(r"\S")


def looks_like_json(name: str, text: str) -> bool:
    """A `.json` file, or text whose first non-blank character opens a JSON object or array."""
    first = _FIRST_CHAR.search(text)  # not text.lstrip(): that copies a 30 MB input
    return name.endswith(".json") or (first is not None and first.group() in ("{", "["))


def read_documents(name: str, text: str) -> list[Any]:
    """Parse one file's text into its documents; UsageError when it is not YAML/JSON."""
    return list(iter_documents(name, text))


def iter_documents(name: str, text: str) -> Iterator[Any]:
    """`read_documents` one document at a time: a YAML error surfaces when its document is reached."""
    if looks_like_json(name, text):
        try:
            docs = _json_documents(text)
        except ValueError as e:
            if name.endswith(".json"):
                raise UsageError(f"{name}: not valid JSON: {e}") from None
        except RecursionError:
            raise UsageError(f"{name}: {JSON_TOO_DEEP}") from None
        else:
            yield from _drained(docs)
            return
    yield from iter_yaml(name, text)


# --------------------------------------------------------------------------- JSON

# kubectl reads several JSON documents written one after another (`kubectl
# get svc -o json; kubectl get endpointslices -o json`), and so does rulegen.
# msgspec stops at the first byte after a document with "trailing characters
# (byte N)", N counting from 1: that is where the next document starts. Each
# part is decoded on its own; if a split is ever wrong, the part does not
# decode and `json` reads the whole text instead (and words its errors).

_TRAILING = re.compile(r"trailing characters \(byte (\d+)\)")
_JSON_BLANK = re.compile(rb"[ \t\r\n]*")
_TEXT_BLANK = re.compile(r"[ \t\r\n]*")


def _json_spans(data: bytes) -> list[tuple[int, int]] | None:
    """Start and end of each JSON document in DATA, or None when DATA is not a run of them."""
    view = memoryview(data)
    spans: list[tuple[int, int]] = []
    pos = _JSON_BLANK.match(data).end()  # type: ignore[union-attr]
    n = len(data)
    while pos < n:
        try:
            msgspec.json.decode(view[pos:], type=msgspec.Raw)
        except msgspec.DecodeError as e:
            m = _TRAILING.search(str(e))
            if m is None:
                return None
            nxt = pos + int(m.group(1)) - 1
            if not pos < nxt < n:
                return None
            spans.append((pos, nxt))
            pos = nxt
        else:
            spans.append((pos, n))
            break
    return spans


def _json_documents(text: str) -> list[Any]:
    """Every JSON document of TEXT; ValueError (json's wording) when it is not JSON."""
    try:
        # msgspec's decoder builds the same dicts and lists ~1.6x faster; what it
        # refuses (NaN, 1e400, lone surrogates, bad JSON) goes to json for the verdict.
        return [msgspec.json.decode(text)]
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        if _TRAILING.search(str(e)):
            data = text.encode()
            spans = _json_spans(data)
            if spans is not None:
                view = memoryview(data)
                try:
                    return [msgspec.json.decode(view[a:b]) for a, b in spans]
                except (msgspec.DecodeError, msgspec.ValidationError):
                    pass
    return _json_stream(text)


def _json_stream(text: str) -> list[Any]:
    """`json.loads` for one or more documents in a row, with json's error positions in the whole text."""
    decoder = json.JSONDecoder()
    pos = _TEXT_BLANK.match(text).end()  # type: ignore[union-attr]
    if pos == len(text):
        return [json.loads(text)]  # raises json's "Expecting value"
    out = []
    while pos < len(text):
        doc, pos = decoder.raw_decode(text, pos)
        out.append(doc)
        pos = _TEXT_BLANK.match(text, pos).end()  # type: ignore[union-attr]
    return out


class _ListShape(msgspec.Struct):
    """A JSON document's top level as far as finding its List items needs; the items stay raw bytes."""

    kind: Any = None
    apiVersion: Any = None
    items: list[msgspec.Raw] | None | msgspec.UnsetType = msgspec.UNSET


class JsonPart:
    """One document of a JSON input; a List's items kept raw until each is wanted."""

    __slots__ = ("data", "items", "kind", "api_version")

    def __init__(self, data: Any, items: list[msgspec.Raw] | None = None, kind: str | None = None,
                 api_version: str | None = None):
        self.data = data  # its bytes; None when it is the whole input
        self.items = items  # a List's raw items; None: decode the document whole
        self.kind = kind  # the kind a typed List gives its items (`ServiceList`: Service), else None
        self.api_version = api_version


class _NotOne(Exception):
    """Bytes that are not one JSON document as msgspec reads it (TRAILING: more follow)."""

    def __init__(self, trailing: bool):
        super().__init__()
        self.trailing = trailing


def _part(data: Any, src: Any) -> JsonPart:
    try:
        top = msgspec.json.decode(src, type=_ListShape)
    except msgspec.ValidationError:  # not an object, or `items` not a list of values: read it whole
        if data is None:  # unless other documents follow (msgspec stopped before it saw them)
            try:
                msgspec.json.decode(src, type=msgspec.Raw)
            except msgspec.DecodeError as e:
                raise _NotOne(bool(_TRAILING.search(str(e)))) from None
        return JsonPart(data)
    except msgspec.DecodeError as e:
        raise _NotOne(bool(_TRAILING.search(str(e)))) from None
    if lists_items(top.kind, top.items is not msgspec.UNSET) and top.items:
        api = top.apiVersion if isinstance(top.apiVersion, str) else None
        return JsonPart(data, top.items, item_kind(top.kind), api)
    return JsonPart(data)


def json_parts(name: str, text: str, data: bytes | None = None) -> list[JsonPart] | None:
    """The documents of a JSON input (one, or several in a row), or None when it is not JSON.

    DATA, when the caller has TEXT encoded already; msgspec reads TEXT itself
    otherwise, without the 30 MB copy an `encode()` would make.

    msgspec checks the syntax of the whole input but builds nothing inside a
    List's items (~20 ms for 30 MB). None also for what msgspec refuses (NaN,
    bad syntax): `iter_documents` words the verdict on those.
    """
    if not looks_like_json(name, text):
        return None
    try:
        try:
            return [_part(None, text if data is None else data)]
        except _NotOne as e:
            if not e.trailing:
                return None
        data = text.encode() if data is None else data
        spans = _json_spans(data)
        if spans is None:
            return None
        view = memoryview(data)
        return [_part(view[a:b], view[a:b]) for a, b in spans]
    except _NotOne:
        return None
    except RecursionError:
        raise UsageError(f"{name}: {JSON_TOO_DEEP}") from None


def json_document(name: str, data: Any) -> Any:
    """One JSON document's bytes (a `JsonPart` that is not a List), decoded."""
    try:
        try:
            return msgspec.json.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return json.loads(bytes(data))
    except ValueError as e:
        raise UsageError(f"{name}: not valid JSON: {e}") from None
    except RecursionError:
        raise UsageError(f"{name}: {JSON_TOO_DEEP}") from None


_decode = msgspec.json.Decoder().decode


def decode_item(raw: Any) -> Any:
    """One List item's JSON, as `json.loads` would give it (1e400 and friends included).

    RecursionError for an item nested too deep: the caller knows its place.
    """
    try:
        return _decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):  # numbers msgspec will not hold (1e400)
        return json.loads(bytes(raw))


def iter_objects(paths: Iterable[str]) -> Iterator[tuple[Place, Any]]:
    """Every top-level object with its place; List items are unpacked."""
    for name in expand_paths(paths):
        shown = "<stdin>" if name == "-" else name
        text = read_text(name)
        parts = json_parts(shown, text)
        if parts is None or (len(parts) == 1 and parts[0].items is None):
            # Documents, too, are built one at a time and freed once converted.
            yield from objects_of(shown, iter_documents(shown, text))
            continue
        del text
        for i, part in enumerate(_drained(parts), 1):
            if part.items is None:
                yield from objects_of(shown, [json_document(shown, part.data)], i - 1)
                continue
            # A JSON List's items are decoded one at a time, each just before it is
            # converted and freed right after: the dicts being walked stay in the CPU
            # cache, where building a 10k-Service tree first and walking it afterwards
            # misses it on every object (and holds the whole tree in memory).
            kind, api = part.kind, part.api_version
            j = 0
            try:
                for j, raw in enumerate(_drained(part.items), 1):
                    yield Place(shown, i, item=j), typed(decode_item(raw), kind, api)
            except RecursionError:
                raise UsageError(f"{Place(shown, i, item=j)}: {JSON_TOO_DEEP}") from None


# --------------------------------------------------------------------------- lists


def is_list(doc: Any) -> bool:
    """A `kind: List` (or `*List` with items) document, whose items are the objects."""
    return isinstance(doc, dict) and lists_items(doc.get("kind"), "items" in doc)


def lists_items(kind: Any, has_items: bool) -> bool:
    """Whether a document of KIND (with or without an `items` field) is a list of objects."""
    return kind == "List" or (has_items and str(kind).endswith("List"))


def item_kind(list_kind: Any) -> str | None:
    """The kind of a typed list's items (`ServiceList`: `Service`); None for `List` and the rest."""
    if isinstance(list_kind, str) and len(list_kind) > 4 and list_kind.endswith("List"):
        return list_kind[:-4]
    return None


def typed(item: Any, kind: str | None, api_version: str | None) -> Any:
    """ITEM given its typed list's kind and apiVersion when it names none itself.

    The API server leaves them out of a typed list's items (`kubectl get
    --raw`, curl, client libraries); an item that names its kind keeps it.
    """
    if kind is not None and item.__class__ is dict and not item.get("kind"):
        item["kind"] = kind
        if api_version is not None and not item.get("apiVersion"):
            item["apiVersion"] = api_version
    return item


def objects_of(shown: str, docs: Iterable[Any], before: int = 0) -> Iterator[tuple[Place, Any]]:
    """The objects of one file's DOCS (the first is document BEFORE+1), each with its place."""
    # Documents and List items are handed out by popping them (or as a
    # generator makes them), so each raw object is freed once converted: a
    # 10k-Service List does not stay in memory beside its model, and the next
    # object reuses warm memory.
    i = before
    for doc in _drained(docs) if isinstance(docs, list) else docs:
        i += 1
        if is_list(doc):
            items = doc.get("items") or []
            if not isinstance(items, list):
                yield Place(shown, i, "List"), {"__bad__": "items is not a list"}
                continue
            kind = item_kind(doc.get("kind"))
            api = doc.get("apiVersion") if isinstance(doc.get("apiVersion"), str) else None
            doc = None
            for j, item in enumerate(_drained(items), 1):
                yield Place(shown, i, item=j), typed(item, kind, api)
        else:
            yield Place(shown, i), doc
        doc = None


def _drained(items: list[Any]) -> Iterator[Any]:
    """ITEMS in order, each removed from the list as it is handed out."""
    items.reverse()
    while items:
        yield items.pop()


# --------------------------------------------------------------------------- YAML


def read_yaml(name: str, text: str) -> list[Any]:
    """The YAML documents of TEXT (empty ones dropped); UsageError when it is not YAML."""
    return list(iter_yaml(name, text))


def iter_yaml(name: str, text: str) -> Iterator[Any]:
    """`read_yaml` one document at a time."""
    n = 0
    try:
        for d in _iter_yaml(text):
            if d is not None:
                n += 1
                yield d
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UsageError(f"{name}: not valid YAML{where}: {problem}") from None
    except _Limit as e:
        mark = getattr(e.node, "start_mark", None) if e.node is not None else None
        where = f", line {mark.line + 1}" if mark else ""
        raise UsageError(f"{name}: document {n + 1}{where}: {e.message}") from None


class _FastYamlLoader(_YamlLoader):  # type: ignore[misc, valid-type]
    """The C loader with its implicit-tag resolver cached per scalar text.

    PyYAML's C loader still resolves and constructs every node in Python; a
    large cluster repeats the same few thousand scalars (`TCP`, `true`,
    label values), so the regex walk is done once per distinct text.
    """

    _tags: dict[str, str] = {}

    def resolve(self, kind, value, implicit):
        if kind is yaml.ScalarNode and implicit[0]:
            tag = self._tags.get(value)
            if tag is None:
                tag = super().resolve(kind, value, implicit)
                if len(self._tags) < 1 << 16:
                    self._tags[value] = tag
            return tag
        return super().resolve(kind, value, implicit)


_STR_TAG = "tag:yaml.org,2002:str"
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Unusual(Exception):
    """A node the fast builder leaves to PyYAML: merge keys, explicit tags."""


class _Limit(Exception):
    """A YAML document past one of the bounds: what is wrong, and the node where."""

    def __init__(self, message: str, node: Any):
        super().__init__(message)
        self.message = message
        self.node = node


_scalars: dict[tuple[str, str], Any] = {}


def _build(loader: Any, node: Any, depth: int) -> Any:
    """Plain mappings, sequences and strings built directly; every other scalar by PyYAML.

    DEPTH: collections above NODE. Aliases are only ever followed here in
    documents `_check_graph` has passed (no cycles, bounded expansion).
    """
    cls = node.__class__
    if cls is yaml.ScalarNode:
        if node.tag == _STR_TAG:
            return node.value
        key = (node.tag, node.value)
        v = _scalars.get(key, _scalars)
        if v is _scalars:
            # Not construct_object(): its memo would keep every node alive until the end.
            ctor = loader.yaml_constructors.get(node.tag)
            if ctor is None:
                raise _Unusual
            v = ctor(loader, node)  # int, float, bool, None, timestamp, binary: immutable
            if len(_scalars) < 1 << 16:
                _scalars[key] = v
        return v
    if depth >= MAX_DEPTH:
        raise _Limit(TOO_DEEP, node)
    depth += 1
    if cls is yaml.MappingNode and node.tag == _MAP_TAG:
        out = {}
        for k, v in node.value:
            if k.tag == _MERGE_TAG:
                raise _Unusual
            out[_build(loader, k, depth)] = _build(loader, v, depth)
        return out
    if cls is yaml.SequenceNode and node.tag == _SEQ_TAG:
        return [_build(loader, v, depth) for v in node.value]
    raise _Unusual


def _count(n: int) -> str:
    return f"{n:,}" if n < 10**15 else f"about 10^{len(str(n)) - 1}"


def _check_graph(root: Any) -> None:
    """Raise _Limit for a document that is too deep, holds a recursive alias, or an alias bomb.

    Walks each distinct node once, keeping the size its subtree would have
    once every alias in it is expanded, so a bomb is measured, never built.
    """
    seen: dict[int, tuple[int, int]] = {}  # collection node → (nodes once expanded, levels below it)
    path: set[int] = set()
    own = 0  # distinct nodes

    def walk(node: Any, depth: int) -> tuple[int, int]:
        nonlocal own
        key = id(node)
        got = seen.get(key)
        if got is not None:
            if depth + got[1] >= MAX_DEPTH:  # reached again, deeper, through an alias
                raise _Limit(TOO_DEEP, node)
            return got
        if key in path:
            raise _Limit("a recursive alias (an alias inside the node it names)", node)
        if depth >= MAX_DEPTH:
            raise _Limit(TOO_DEEP, node)
        path.add(key)
        own += 1
        size, height = 1, 0
        kids = node.value
        if node.__class__ is yaml.MappingNode:
            kids = [x for pair in kids for x in pair]
        for kid in kids:
            if kid.__class__ is yaml.ScalarNode:
                own += 1
                size += 1
                continue
            s, h = walk(kid, depth + 1)
            size += s
            if h >= height:
                height = h + 1
        path.discard(key)
        got = seen[key] = (size, height)
        return got

    if root.__class__ is yaml.ScalarNode:
        return
    size, _ = walk(root, 0)
    most = own + max(own, ALIAS_ALLOWANCE)
    if size > most:
        raise _Limit(f"its aliases would expand {_count(own)} nodes to {_count(size)}, "
                     f"more than the {_count(most)} rulegen builds (an alias bomb?)", None)


# An anchor (`&name`) opens a token, so it follows a blank, a flow indicator or
# a quote, never a letter or digit (there `&` is part of a plain scalar, as in
# a URL's query string), and its name is not empty. Text with no other `&`
# has no anchor, so no alias: its documents are built without the graph check.
_MAYBE_ANCHOR = re.compile(r"&[^ \t\r\n]")


def _may_have_anchors(text: str) -> bool:
    for m in _MAYBE_ANCHOR.finditer(text):
        i = m.start()
        if i == 0 or not (text[i - 1].isascii() and text[i - 1].isalnum()):
            return True
    return False


def _iter_yaml(text: str) -> Iterator[Any]:
    """`yaml.load_all(text, CSafeLoader)`, ~1.5x faster on Kubernetes-shaped documents, with the bounds above."""
    loader = _FastYamlLoader(text)
    anchored = "&" in text and _may_have_anchors(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if anchored:
                _check_graph(node)
            try:
                doc = _build(loader, node, 0)
            except (_Unusual, TypeError):  # TypeError: an unhashable key; PyYAML words the error
                if not anchored:
                    _check_graph(node)  # PyYAML's constructor recurses too: bound its depth first
                doc = loader.construct_document(node)
            del node
            yield doc
    finally:
        loader.dispose()


# --------------------------------------------------------------------------- checks


class _Bad(Exception):
    """A field so wrong that the object it belongs to is left out."""

    def __init__(self, fld: str, message: str):
        super().__init__(message)
        self.field = fld
        self.message = message


class _Refused(Exception):
    """A name the API server refuses: the whole object is left out, whatever part of it holds the name.

    Not a `_Bad`, so the handlers that leave out one port or endpoint let it through.
    """

    def __init__(self, fld: str, message: str):
        super().__init__(message)
        self.field = fld
        self.message = message


REFUSED_SLUG = "refused-name"  # the lint code that says the same (rulegen.lint.findings)


def _check(why: str, fld: str, value: str, what: str) -> None:
    """Raise `_Refused` for VALUE at FLD when a name check gave a reason WHY."""
    if why:
        raise _Refused(fld, f"{shown(value)} is not a valid {what}: {why}")


def _type_name(v: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number", type(None): "null"}.get(type(v), type(v).__name__)


def _map(v: Any, fld: str) -> dict:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise _Bad(fld, f"expected a mapping, got {_type_name(v)}")
    return v


def _list(v: Any, fld: str) -> list:
    if v is None:
        return []
    if not isinstance(v, list):
        raise _Bad(fld, f"expected a list, got {_type_name(v)}")
    return v


def _str(v: Any, fld: str, default: str | None = None) -> str | None:
    if v is None:
        return default
    if not isinstance(v, str):
        raise _Bad(fld, f"expected a string, got {_type_name(v)}")
    return v


def _int(v: Any, fld: str) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, str) and v.strip().isdigit():
            raise _Bad(fld, f"expected an integer, got the string {v!r}")
        raise _Bad(fld, f"expected an integer, got {_type_name(v)}")
    return v


def _bool(v: Any, fld: str) -> bool | None:
    if v is None:
        return None
    if not isinstance(v, bool):
        raise _Bad(fld, f"expected true or false, got {_type_name(v)}")
    return v


def _not_an_ip(holder: dict, key: str) -> str:
    """Why HOLDER[KEY] is no IP address: missing, null, or not one."""
    if key not in holder:
        return "missing"
    v = holder[key]
    return "null" if v is None else f"{v!r} is not a valid IP address"


def _parsed(items: list, fld: str, cx: "_Ctx", cidr: bool = False, strip: bool = False) -> list[str]:
    """Each entry of an address or CIDR list in canonical form; bad ones reported and left out."""
    parse, what = (parse_cidr, "CIDR") if cidr else (parse_ip, "IP address")
    out = []
    for i, v in enumerate(items):
        canon = parse(v.strip() if strip else v) if isinstance(v, str) else None
        if canon is None:
            cx.warn(f"{fld}[{i}]", ("null" if v is None else f"{v!r} is not a valid {what}") + " (left out)")
        else:
            out.append(canon)
    return out


class _Ctx:
    """Reports problems for one object at one place."""

    __slots__ = ("place", "report")

    def __init__(self, place: Place, report: Report):
        self.place = place
        self.report = report

    def warn(self, fld: str, message: str) -> None:
        self.report.add(self.place, fld, message)

    def note(self, fld: str, message: str) -> None:
        """Informational: never fatal, not even under --strict."""
        self.report.add(self.place, fld, message, notice=True)


def _meta(doc: dict, namespaced: bool = True) -> tuple[str, str]:
    meta = _map(doc.get("metadata"), "metadata")
    name = _str(meta.get("name"), "metadata.name")
    if not name:
        raise _Bad("metadata.name", "missing")
    ns = _str(meta.get("namespace"), "metadata.namespace", "default") or "default"
    return (ns if namespaced else ""), name


# --------------------------------------------------------------------------- kinds


def _service(doc: dict, cx: _Ctx) -> Service | None:
    ns, name = _meta(doc)
    spec = _map(doc.get("spec"), "spec")
    status = _map(doc.get("status"), "status")

    stype = _str(spec.get("type"), "spec.type", "ClusterIP")
    if stype not in SERVICE_TYPES:
        raise _Bad("spec.type", f"{stype!r} is not one of {', '.join(SERVICE_TYPES)}")

    raw_cip = _str(spec.get("clusterIP"), "spec.clusterIP", "") or ""
    raw_cips = [_str(x, f"spec.clusterIPs[{i}]", "") or "" for i, x in enumerate(_list(spec.get("clusterIPs"), "spec.clusterIPs"))]
    headless = raw_cip == "None" or raw_cips[:1] == ["None"]
    cluster_ip = ""
    cluster_ips: list[str] = []
    if not headless and stype != "ExternalName":
        if raw_cip:
            cluster_ip = parse_ip(raw_cip) or ""
            if not cluster_ip:
                cx.warn("spec.clusterIP", f"{raw_cip!r} is not a valid IP address")
        for i, ip in enumerate(raw_cips):
            canon = parse_ip(ip)
            if canon is None:
                if ip != raw_cip:
                    cx.warn(f"spec.clusterIPs[{i}]", f"{ip!r} is not a valid IP address")
                cluster_ips.append("")  # keep positions aligned with ipFamilies
            else:
                cluster_ips.append(canon)
    families = []
    for i, f in enumerate(_list(spec.get("ipFamilies"), "spec.ipFamilies")):
        f = _str(f, f"spec.ipFamilies[{i}]")
        if f not in ("IPv4", "IPv6"):
            raise _Bad(f"spec.ipFamilies[{i}]", f"{f!r} is not IPv4 or IPv6")
        families.append(f)

    ports: list[ServicePort] = []
    names: set[str] = set()
    raw_ports = _list(spec.get("ports"), "spec.ports")
    several = len(raw_ports) > 1
    good_names = apinames.dns1123_label.good
    for i, p in enumerate(raw_ports):
        fld = f"spec.ports[{i}]"
        try:
            p = _map(p, fld)
            pname = _str(p.get("name"), f"{fld}.name", "") or ""
            # The API server's rules: RFC 1123 labels, unique, required when there are
            # several ports (so no two ports can share a name and protocol either).
            if pname:
                if pname not in good_names:
                    _check(apinames.dns1123_label(pname), f"{fld}.name", pname, "port name")
                if pname in names:
                    raise _Refused(f"{fld}.name", f"duplicate port name {pname!r}")
                names.add(pname)
            elif several:
                raise _Refused(f"{fld}.name", "missing: a Service with several ports must name each of them")
            proto = _str(p.get("protocol"), f"{fld}.protocol", "TCP")
            if proto not in PROTOCOLS:
                raise _Bad(f"{fld}.protocol", f"{proto!r} is not TCP, UDP or SCTP")
            port = _int(p.get("port"), f"{fld}.port")
            if port is None:
                raise _Bad(f"{fld}.port", "missing")
            if not 1 <= port <= 65535:
                raise _Bad(f"{fld}.port", f"{port} is not a valid port")
            np_ = 0
            try:
                np_ = _int(p.get("nodePort"), f"{fld}.nodePort") or 0
                if not 0 <= np_ <= 65535:
                    raise _Bad(f"{fld}.nodePort", f"{np_} is not a valid port")
            except _Bad as e:
                cx.warn(e.field, e.message + " (node port left out)")
                np_ = 0
            tp = p.get("targetPort")
            if tp is not None and not isinstance(tp, (int, str)) or isinstance(tp, bool):
                cx.warn(f"{fld}.targetPort", f"expected a port number or name, got {_type_name(tp)}")
                tp = None
            elif tp.__class__ is str and tp and tp not in apinames.port_name.good:  # "": the port, defaulted
                _check(apinames.port_name(tp), f"{fld}.targetPort", tp, "port name")
            ports.append(ServicePort(pname, proto, port, np_, tp, i))
        except _Bad as e:
            cx.warn(e.field, e.message + " (port left out)")

    ext_ips = _parsed(_list(spec.get("externalIPs"), "spec.externalIPs"), "spec.externalIPs", cx)

    ingress = []
    lb = _map(status.get("loadBalancer"), "status.loadBalancer")
    for i, ing in enumerate(_list(lb.get("ingress"), "status.loadBalancer.ingress")):
        fld = f"status.loadBalancer.ingress[{i}]"
        ing = _map(ing, fld)
        ip = ing.get("ip")
        if not ip:
            continue  # hostname-only ingress: nothing for kube-proxy
        canon = parse_ip(ip) if isinstance(ip, str) else None
        if canon is None:
            cx.warn(f"{fld}.ip", f"{ip!r} is not a valid IP address (left out)")
            continue
        mode = _str(ing.get("ipMode"), f"{fld}.ipMode")
        if mode not in (None, "VIP", "Proxy"):
            cx.warn(f"{fld}.ipMode", f"{mode!r} is not VIP or Proxy (read as VIP)")
            mode = None
        ingress.append(LBIngress(canon, mode))

    fld = "spec.loadBalancerSourceRanges"
    ranges = _parsed(_list(spec.get("loadBalancerSourceRanges"), fld), fld, cx, cidr=True, strip=True)

    def policy(key: str) -> str:
        v = _str(spec.get(key), f"spec.{key}", "Cluster") or "Cluster"
        if v == "Global":  # the pre-1.22 spelling of Cluster
            v = "Cluster"
        if v not in ("Cluster", "Local"):
            cx.warn(f"spec.{key}", f"{v!r} is not Cluster or Local (read as Cluster)")
            v = "Cluster"
        return v

    etp = policy("externalTrafficPolicy")
    itp = policy("internalTrafficPolicy")
    hc = 0
    try:
        hc = _int(spec.get("healthCheckNodePort"), "spec.healthCheckNodePort") or 0
        if not 0 <= hc <= 65535:
            raise _Bad("spec.healthCheckNodePort", f"{hc} is not a valid port")
    except _Bad as e:
        cx.warn(e.field, e.message + " (left out)")
        hc = 0

    aff = _str(spec.get("sessionAffinity"), "spec.sessionAffinity", "None") or "None"
    if aff not in ("None", "ClientIP"):
        cx.warn("spec.sessionAffinity", f"{aff!r} is not None or ClientIP (read as None)")
        aff = "None"
    timeout = 10800
    sac = _map(spec.get("sessionAffinityConfig"), "spec.sessionAffinityConfig")
    cip = _map(sac.get("clientIP"), "spec.sessionAffinityConfig.clientIP")
    fld = "spec.sessionAffinityConfig.clientIP.timeoutSeconds"
    try:
        t = _int(cip.get("timeoutSeconds"), fld)
        if t is not None:
            if not 1 <= t <= 86400:
                raise _Bad(fld, f"{t} is not between 1 and 86400")
            timeout = t
    except _Bad as e:
        cx.warn(e.field, e.message + " (default 10800 used)")

    selector = spec.get("selector")
    if selector is not None and not (isinstance(selector, dict) and all(isinstance(v, str) for v in selector.values())):
        cx.warn("spec.selector", "expected a mapping of strings (ignored)")
        selector = None
    if selector and not _known_labels(selector):
        _check_labels(selector, "spec.selector")

    # The fields the API server and the controllers act on when the Service is
    # created (`--allocate`); an applied Service carries their results already.
    policy_ = spec.get("ipFamilyPolicy")
    if policy_ is not None and policy_ not in IP_FAMILY_POLICIES:
        raise _Bad("spec.ipFamilyPolicy", f"{_str(policy_, 'spec.ipFamilyPolicy')!r} is not one of "
                   f"{', '.join(IP_FAMILY_POLICIES)}")
    lb_ports = spec.get("allocateLoadBalancerNodePorts")
    publish = spec.get("publishNotReadyAddresses")
    lb_class, annotation_keys = "", ()
    if stype == "LoadBalancer":  # who announces its address: lint's question, so read only here
        lb_class = _str(spec.get("loadBalancerClass"), "spec.loadBalancerClass", "") or ""
        notes = _map(_map(doc.get("metadata"), "metadata").get("annotations"), "metadata.annotations")
        annotation_keys = tuple(k for k in notes if isinstance(k, str))

    return Service(
        namespace=ns, name=name, type=stype, cluster_ip=cluster_ip, cluster_ips=tuple(cluster_ips), headless=headless,
        ip_families=tuple(families), ports=tuple(ports), external_ips=tuple(ext_ips),
        lb_ingress=tuple(ingress), source_ranges=tuple(ranges), external_traffic_policy=etp,
        internal_traffic_policy=itp, health_check_node_port=hc, session_affinity=aff,
        affinity_timeout=timeout, selector=selector, place=cx.place,
        no_cluster_ip=not raw_cip and not headless and stype != "ExternalName",
        ip_family_policy=policy_,
        allocate_lb_node_ports=True if lb_ports is None else bool(_bool(lb_ports, "spec.allocateLoadBalancerNodePorts")),
        publish_not_ready=bool(_bool(publish, "spec.publishNotReadyAddresses")),
        lb_class=lb_class, annotation_keys=annotation_keys,
    )


def _cond(v: Any, fld: str, default: bool) -> bool:
    if v is None:
        return default
    if not isinstance(v, bool):
        raise _Bad(fld, f"expected true or false, got {_type_name(v)}")
    return v


def _check_labels(labels: dict, fld: str) -> None:
    """Label keys and values (or a selector's) as the API server checks them."""
    bad = apinames.labels(labels)
    if bad is not None:
        key, text, part, why = bad
        shown_key = shown(key) if part == "key" else key
        raise _Refused(f"{fld}[{shown_key}]", f"{shown(text)} is not a valid label {part}: {why}")


def _hints(h: dict, key: str, fld: str) -> tuple[str, ...] | None:
    items = h.get(key)
    if items is None:
        return None
    # forZones names are label values, forNodes names are node names.
    check, what = (apinames.label_value, "zone name") if key == "forZones" else (apinames.node_name, "node name")
    out = []
    for i, it in enumerate(_list(items, f"{fld}.{key}")):
        n = _str(_map(it, f"{fld}.{key}[{i}]").get("name"), f"{fld}.{key}[{i}].name")
        if n is not None:
            _check(check(n), f"{fld}.{key}[{i}].name", n, what)
        if n:
            out.append(n)
    return tuple(out)


def _slice_port(p: Any, fld: str) -> SlicePort:
    p = _map(p, fld)
    name = p.get("name")
    if name is not None and not isinstance(name, str):
        raise _Bad(f"{fld}.name", f"expected a string, got {_type_name(name)}")
    if name and name not in apinames.dns1123_label.good:
        _check(apinames.dns1123_label(name), f"{fld}.name", name, "port name")
    proto = _str(p.get("protocol"), f"{fld}.protocol", "TCP")
    if proto not in PROTOCOLS:
        raise _Bad(f"{fld}.protocol", f"{proto!r} is not TCP, UDP or SCTP")
    port = _int(p.get("port"), f"{fld}.port")
    if port is not None and not 0 <= port <= 65535:
        raise _Bad(f"{fld}.port", f"{port} is not a valid port")
    return SlicePort(name, proto, port)


# Valid node names seen in nodeName fields, each mapped to its interned copy.
_NODE_NAMES: dict[str, str] = {}


def _endpoint_slice(doc: dict, cx: _Ctx) -> EndpointSlice:
    ns, name = _meta(doc)
    labels = _map(_map(doc.get("metadata"), "metadata").get("labels"), "metadata.labels")
    svc = labels.get(SERVICE_NAME_LABEL)
    if svc is not None and not isinstance(svc, str):
        raise _Bad(f"metadata.labels[{SERVICE_NAME_LABEL}]", "expected a string")
    atype = _str(doc.get("addressType"), "addressType")
    if atype not in ("IPv4", "IPv6", "FQDN"):
        raise _Bad("addressType", f"{atype!r} is not IPv4, IPv6 or FQDN")
    ports = []
    names: set[str] = set()
    for i, p in enumerate(_list(doc.get("ports"), "ports")):
        try:
            sp = _slice_port(p, f"ports[{i}]")
        except _Bad as e:
            cx.warn(e.field, e.message + " (port left out)")
            continue
        # The API server refuses two ports of one slice with the same name ("" included).
        pname = sp.name or ""
        if pname in names:
            raise _Refused(f"ports[{i}].name", f"duplicate port name {pname!r}")
        names.add(pname)
        ports.append(sp)
    eps = []
    good_nodes = _NODE_NAMES
    raw_eps = _list(doc.get("endpoints"), "endpoints")
    want6 = atype == "IPv6"
    # The hot loop of a large cluster (one pass per endpoint): field names are
    # only formatted on the way to an error message.
    for i, e in enumerate(raw_eps):
        try:
            if not isinstance(e, dict):
                raise _Bad(f"endpoints[{i}]", f"expected a mapping, got {_type_name(e)}")
            addrs = e.get("addresses")
            if not addrs or not isinstance(addrs, list):
                raise _Bad(f"endpoints[{i}].addresses", "missing or empty")
            if atype == "FQDN":
                continue
            a0 = addrs[0]
            ip = parse_ip(a0) if isinstance(a0, str) else None
            if ip is None:
                raise _Bad(f"endpoints[{i}].addresses[0]", "null" if a0 is None else f"{a0!r} is not a valid IP address")
            if (":" in ip) != want6:
                raise _Bad(f"endpoints[{i}].addresses[0]", f"{a0!r} is not an {atype} address")
            c = e.get("conditions")
            if c:
                if not isinstance(c, dict):
                    raise _Bad(f"endpoints[{i}].conditions", f"expected a mapping, got {_type_name(c)}")
                ready = c.get("ready", True)
                serving = c.get("serving", True)
                term = c.get("terminating", False)
                if ready.__class__ is not bool or serving.__class__ is not bool or term.__class__ is not bool:
                    fld = f"endpoints[{i}].conditions"
                    ready = _cond(c.get("ready"), f"{fld}.ready", True)
                    serving = _cond(c.get("serving"), f"{fld}.serving", True)
                    term = _cond(c.get("terminating"), f"{fld}.terminating", False)
            else:
                ready, serving, term = True, True, False
            node = e.get("nodeName")
            if node is not None:
                if node.__class__ is not str:
                    raise _Bad(f"endpoints[{i}].nodeName", f"expected a string, got {_type_name(node)}")
                # A cluster has a few hundred node names over 100k endpoints: each is
                # checked once, and one shared string each keeps the model ~15 MB
                # smaller at 10k. One dict lookup per endpoint does both.
                seen = good_nodes.get(node)
                if seen is None:
                    _check(apinames.node_name(node), f"endpoints[{i}].nodeName", node, "node name")
                    seen = _intern(node)
                    if len(good_nodes) < apinames.CACHE_MAX:
                        good_nodes[seen] = seen
                node = seen
            zone = e.get("zone")
            zone = _intern(zone) if zone.__class__ is str else None
            h = e.get("hints")
            zh = nh = None
            if h:
                fld = f"endpoints[{i}].hints"
                h = _map(h, fld)
                zh = _hints(h, "forZones", fld)
                nh = _hints(h, "forNodes", fld)
            eps.append(Endpoint(ip, ready, serving, term, node or None, zone, zh, nh))
        except _Bad as b:
            cx.warn(b.field, b.message + " (endpoint left out)")
    return EndpointSlice(ns, name, svc, atype, tuple(ports), tuple(eps), cx.place)


def _legacy_endpoints(doc: dict, cx: _Ctx) -> list[EndpointSlice]:
    """v1 Endpoints → one slice per subset and family, as the mirroring controller does."""
    ns, name = _meta(doc)
    out = []
    for si, sub in enumerate(_list(doc.get("subsets"), "subsets")):
        sub = _map(sub, f"subsets[{si}]")
        ports = []
        raw_ports = _list(sub.get("ports"), f"subsets[{si}].ports")
        for pi, p in enumerate(raw_ports):
            try:
                sp = _slice_port(p, f"subsets[{si}].ports[{pi}]")
                if not sp.name and len(raw_ports) > 1:
                    raise _Refused(f"subsets[{si}].ports[{pi}].name",
                                   "missing: a subset with several ports must name each of them")
                ports.append(SlicePort(sp.name or "", sp.protocol, sp.port))
            except _Bad as e:
                cx.warn(e.field, e.message + " (port left out)")
        by_family: dict[str, list[Endpoint]] = {"IPv4": [], "IPv6": []}
        for key, ready in (("addresses", True), ("notReadyAddresses", False)):
            for ai, a in enumerate(_list(sub.get(key), f"subsets[{si}].{key}")):
                fld = f"subsets[{si}].{key}[{ai}]"
                a = _map(a, fld)
                ip = parse_ip(a.get("ip")) if isinstance(a.get("ip"), str) else None
                if ip is None:
                    cx.warn(f"{fld}.ip", _not_an_ip(a, "ip") + " (endpoint left out)")
                    continue
                node = a.get("nodeName") if isinstance(a.get("nodeName"), str) else None
                if node:
                    _check(apinames.node_name(node), f"{fld}.nodeName", node, "node name")
                by_family["IPv6" if ":" in ip else "IPv4"].append(Endpoint(ip, ready, True, False, node))
        for fam, eps in by_family.items():
            if eps:
                out.append(EndpointSlice(ns, f"{name}-{si}-{fam.lower()}", name, fam, tuple(ports), tuple(eps), cx.place))
    return out


def _node(doc: dict, cx: _Ctx) -> Node:
    _, name = _meta(doc, namespaced=False)
    meta = _map(doc.get("metadata"), "metadata")
    labels = {k: v for k, v in _map(meta.get("labels"), "metadata.labels").items() if isinstance(v, str)}
    spec = _map(doc.get("spec"), "spec")
    status = _map(doc.get("status"), "status")
    internal: list[str] = []
    external: list[str] = []
    for i, a in enumerate(_list(status.get("addresses"), "status.addresses")):
        a = _map(a, f"status.addresses[{i}]")
        if a.get("type") not in ("InternalIP", "ExternalIP"):
            continue
        ip = parse_ip(a.get("address")) if isinstance(a.get("address"), str) else None
        if ip is None:
            cx.warn(f"status.addresses[{i}].address", _not_an_ip(a, "address") + " (left out)")
        else:
            (internal if a.get("type") == "InternalIP" else external).append(ip)
    # kube-proxy's primary node IP of a family (utilnode.GetNodeHostIPs) is the
    # first InternalIP of it, an ExternalIP only when there is none: keep that order.
    addrs: list[str] = []
    for ip in internal + external:
        if ip not in addrs:
            addrs.append(ip)
    raw = _list(spec.get("podCIDRs"), "spec.podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
    cidrs = _parsed(raw, "spec.podCIDRs", cx, cidr=True)
    taints = []
    for i, t in enumerate(_list(spec.get("taints"), "spec.taints")):
        fld = f"spec.taints[{i}]"
        t = _map(t, fld)
        key = _str(t.get("key"), f"{fld}.key") or ""
        _check(apinames.label_key(key), f"{fld}.key", key, "taint key")
        value = _str(t.get("value"), f"{fld}.value") or ""
        _check(apinames.label_value(value), f"{fld}.value", value, "taint value")
        effect = _str(t.get("effect"), f"{fld}.effect") or ""
        if effect not in TAINT_EFFECTS:
            raise _Bad(f"{fld}.effect", f"{effect!r} is not one of {', '.join(TAINT_EFFECTS)}")
        taints.append((key, value, effect))
    if _bool(spec.get("unschedulable"), "spec.unschedulable"):
        taints.append((UNSCHEDULABLE_TAINT, "", "NoSchedule"))
    return Node(name, tuple(addrs), tuple(cidrs), labels.get(ZONE_LABEL), labels, tuple(taints))


def _service_cidr(doc: dict, cx: _Ctx) -> ServiceCIDR:
    _, name = _meta(doc, namespaced=False)
    spec = _map(doc.get("spec"), "spec")
    cidrs = _parsed(_list(spec.get("cidrs"), "spec.cidrs"), "spec.cidrs", cx, cidr=True)
    return ServiceCIDR(name, tuple(cidrs))


TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
TOLERATION_OPERATORS = ("Equal", "Exists")
UNSCHEDULABLE_TAINT = "node.kubernetes.io/unschedulable"  # what the node controller makes of spec.unschedulable
SELECTOR_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


def _container_ports(spec: dict, fld: str) -> tuple[tuple[str, int, str], ...]:
    """(name, port, protocol) of every container port, then of every sidecar's.

    Sidecars are init containers with restartPolicy Always: they run beside
    the containers, and the EndpointSlice controller looks up named target
    ports in them after the containers.
    """
    ports = []
    sidecars = [c for c in _list(spec.get("initContainers"), f"{fld}.initContainers")
                if isinstance(c, dict) and c.get("restartPolicy") == "Always"]
    for key, group in (("containers", _list(spec.get("containers"), f"{fld}.containers")),
                       ("initContainers", sidecars)):
        for ci, c in enumerate(group):
            if not isinstance(c, dict):
                continue
            for pi, p in enumerate(_list(c.get("ports"), f"{fld}.{key}[{ci}].ports")):
                if isinstance(p, dict) and isinstance(p.get("containerPort"), int) and not isinstance(p.get("containerPort"), bool):
                    pname = p.get("name")
                    if pname.__class__ is str and pname:
                        _check(apinames.port_name(pname), f"{fld}.{key}[{ci}].ports[{pi}].name", pname, "port name")
                    proto = p.get("protocol") or "TCP"
                    if proto not in PROTOCOLS:
                        raise _Bad(f"{fld}.{key}[{ci}].ports[{pi}].protocol", f"{proto!r} is not TCP, UDP or SCTP")
                    ports.append((pname if pname.__class__ is str else "", p["containerPort"], proto))
    return tuple(ports)


def _tolerations(spec: dict, fld: str) -> tuple[tuple[str, str, str, str], ...]:
    out = []
    for i, t in enumerate(_list(spec.get("tolerations"), f"{fld}.tolerations")):
        tf = f"{fld}.tolerations[{i}]"
        t = _map(t, tf)
        key = _str(t.get("key"), f"{tf}.key") or ""
        if key:
            _check(apinames.label_key(key), f"{tf}.key", key, "toleration key")
        op = _str(t.get("operator"), f"{tf}.operator") or "Equal"
        if op not in TOLERATION_OPERATORS:
            raise _Bad(f"{tf}.operator", f"{op!r} is not Equal or Exists")
        value = _str(t.get("value"), f"{tf}.value") or ""
        effect = _str(t.get("effect"), f"{tf}.effect") or ""
        if effect and effect not in TAINT_EFFECTS:
            raise _Bad(f"{tf}.effect", f"{effect!r} is not one of {', '.join(TAINT_EFFECTS)}")
        out.append((key, op, value, effect))
    return tuple(out)


def _labels_at(holder: dict, fld: str) -> dict[str, str]:
    """A mapping of label keys to values (labels, a nodeSelector, matchLabels), checked as the API server checks labels."""
    got = _map(holder, fld)
    if not all(v.__class__ is str for v in got.values()):
        raise _Bad(fld, "expected a mapping of strings")
    if got and not _known_labels(got):
        _check_labels(got, fld)
    return dict(got)


def _pod_spec(spec: dict, fld: str) -> PodTemplate:
    """The parts of a pod spec that decide where its pods run and which ports they name."""
    node = _str(spec.get("nodeName"), f"{fld}.nodeName") or None
    if node:
        _check(apinames.node_name(node), f"{fld}.nodeName", node, "node name")
    return PodTemplate(
        container_ports=_container_ports(spec, fld),
        node_selector=_labels_at(spec.get("nodeSelector"), f"{fld}.nodeSelector"),
        node_name=node,
        tolerations=_tolerations(spec, fld),
        host_network=bool(_bool(spec.get("hostNetwork"), f"{fld}.hostNetwork")),
    )


def _owner(meta: dict) -> tuple[str, str] | None:
    """The workload that controls this object (its ownerReference with controller: true), if one rulegen reads."""
    refs = meta.get("ownerReferences")
    for r in refs if isinstance(refs, list) else ():
        if isinstance(r, dict) and r.get("controller") is True and r.get("kind") in WORKLOAD_KINDS:
            name = r.get("name")
            if isinstance(name, str) and name and not apinames.dns1123_subdomain(name):
                return r["kind"], name
    return None


def _pod(doc: dict, cx: _Ctx) -> Pod:
    ns, name = _meta(doc)
    meta = _map(doc.get("metadata"), "metadata")
    labels = {k: v for k, v in _map(meta.get("labels"), "metadata.labels").items() if isinstance(v, str)}
    spec = _map(doc.get("spec"), "spec")
    status = _map(doc.get("status"), "status")
    tpl = _pod_spec(spec, "spec")
    raw_ips = [a.get("ip") for a in _list(status.get("podIPs"), "status.podIPs") if isinstance(a, dict)]
    if not raw_ips and isinstance(status.get("podIP"), str) and status["podIP"]:
        raw_ips = [status["podIP"]]
    ips = tuple(_parsed(raw_ips, "status.podIPs", cx))
    ready = True
    for i, c in enumerate(_list(status.get("conditions"), "status.conditions")):
        if isinstance(c, dict) and c.get("type") == "Ready":
            ready = c.get("status") == "True"
    phase = _str(status.get("phase"), "status.phase") or ""
    return Pod(ns, name, labels, ips[0] if ips else None, tpl.node_name, tpl.container_ports, ips=ips,
               phase=phase, ready=ready, terminating=meta.get("deletionTimestamp") is not None,
               owner=_owner(meta), node_selector=tpl.node_selector, tolerations=tpl.tolerations,
               host_network=tpl.host_network, place=cx.place)


def _selector_matches(labels: dict[str, str], match_labels: dict[str, str],
                      expressions: tuple[tuple[str, str, tuple[str, ...]], ...]) -> bool:
    """A LabelSelector (matchLabels and matchExpressions) against a set of labels."""
    if any(labels.get(k) != v for k, v in match_labels.items()):
        return False
    for key, op, values in expressions:
        have = key in labels
        if op == "In" and not (have and labels[key] in values):
            return False
        if op == "NotIn" and have and labels[key] in values:
            return False
        if op == "Exists" and not have:
            return False
        if op == "DoesNotExist" and have:
            return False
    return True


def _workload(doc: dict, cx: _Ctx, kind: str) -> Workload:
    ns, name = _meta(doc)
    meta = _map(doc.get("metadata"), "metadata")
    spec = _map(doc.get("spec"), "spec")
    replicas = None
    if kind != "DaemonSet":
        replicas = _int(spec.get("replicas"), "spec.replicas")
        if replicas is None:
            replicas = 1  # the API's default
        elif replicas < 0:
            raise _Bad("spec.replicas", f"{replicas} is negative")
    sel = _map(spec.get("selector"), "spec.selector")
    match_labels = _labels_at(sel.get("matchLabels"), "spec.selector.matchLabels")
    exprs = []
    for i, e in enumerate(_list(sel.get("matchExpressions"), "spec.selector.matchExpressions")):
        fld = f"spec.selector.matchExpressions[{i}]"
        e = _map(e, fld)
        key = _str(e.get("key"), f"{fld}.key") or ""
        _check(apinames.label_key(key), f"{fld}.key", key, "label key")
        op = _str(e.get("operator"), f"{fld}.operator")
        if op not in SELECTOR_OPERATORS:
            raise _Bad(f"{fld}.operator", f"{op!r} is not one of {', '.join(SELECTOR_OPERATORS)}")
        values = tuple(_str(v, f"{fld}.values[{j}]") or "" for j, v in enumerate(_list(e.get("values"), f"{fld}.values")))
        exprs.append((key, op, values))
    template = _map(spec.get("template"), "spec.template")
    tmeta = _map(template.get("metadata"), "spec.template.metadata")
    labels = _labels_at(tmeta.get("labels"), "spec.template.metadata.labels")
    tpl = _pod_spec(_map(template.get("spec"), "spec.template.spec"), "spec.template.spec")
    # apps/v1 requires a selector, and one that selects the template's own labels.
    if not match_labels and not exprs:
        raise _Bad("spec.selector", f"missing or empty (the API server refuses such a {kind})")
    if not _selector_matches(labels, match_labels, tuple(exprs)):
        raise _Bad("spec.selector", f"does not select the pod template's labels (the API server refuses such a {kind})")
    return Workload(kind, ns, name, replicas, match_labels, tuple(exprs),
                    PodTemplate(labels, tpl.container_ports, tpl.node_selector, tpl.node_name, tpl.tolerations,
                                tpl.host_network),
                    _owner(meta), cx.place)


def split_cidr_list(v: Any, fld: str, cx: _Ctx) -> tuple[str, ...]:
    """`a,b` strings and lists alike; bad entries reported and left out."""
    items: list[Any]
    if isinstance(v, str):
        items = [x.strip() for x in v.split(",") if x.strip()]
    else:
        items = _list(v, fld)
    out = []
    for i, c in enumerate(items):
        canon = parse_cidr(c) if isinstance(c, str) else None
        if canon is None:
            cx.warn(fld, f"{c!r} is not a valid CIDR (left out)")
        else:
            if host_bits(c, canon):
                cx.note(fld, host_bits_note(c, canon))
            out.append(canon)
    return tuple(out)


def config_from_dict(doc: dict, cx: _Ctx) -> ProxyConfig:
    ipt = _map(doc.get("iptables"), "iptables")
    ipvs = _map(doc.get("ipvs"), "ipvs")
    nft = _map(doc.get("nftables"), "nftables")
    det = _map(doc.get("detectLocal"), "detectLocal")
    mode = _str(doc.get("mode"), "mode")
    if mode == "":
        mode = None
    if mode is not None and mode not in modes():
        known = modes()
        cx.warn("mode", f"{mode!r} is not {', '.join(known[:-1])} or {known[-1]} (ignored)")
        mode = None
    cc = doc.get("clusterCIDR")
    npa = doc.get("nodePortAddresses")
    npa_t = None
    if npa is not None:
        npa_t = tuple(x.strip() for x in (npa.split(",") if isinstance(npa, str) else _list(npa, "nodePortAddresses")) if isinstance(x, str) and x.strip())
    bit = _int(ipt.get("masqueradeBit"), "iptables.masqueradeBit")
    if bit is not None and not 0 <= bit <= 31:
        cx.warn("iptables.masqueradeBit", f"{bit} is not between 0 and 31 (default 14 used)")
        bit = None
    top_masq = _bool(doc.get("masqueradeAll"), "masqueradeAll")
    # These go into the payload as `-i NAME`: a name the kernel or iptables-restore
    # would not read as one interface is reported and ignored (no local detector).
    ifaces = {}
    for key, prefix in (("bridgeInterface", False), ("interfaceNamePrefix", True)):
        fld = f"detectLocal.{key}"
        v = _str(det.get(key), fld) or None
        why = apinames.interface_name(v, prefix) if v else ""
        if why:
            cx.warn(fld, f"{shown(v)} {why} (ignored)")
            v = None
        ifaces[key] = v
    return ProxyConfig(
        mode=mode,
        cluster_cidr=split_cidr_list(cc, "clusterCIDR", cx) if cc else None,
        hostname_override=_str(doc.get("hostnameOverride"), "hostnameOverride") or None,
        nodeport_addresses=npa_t,
        detect_local_mode=_str(doc.get("detectLocalMode"), "detectLocalMode") or None,
        bridge_interface=ifaces["bridgeInterface"],
        interface_name_prefix=ifaces["interfaceNamePrefix"],
        masquerade_all=_bool(ipt.get("masqueradeAll"), "iptables.masqueradeAll") if ipt.get("masqueradeAll") is not None else top_masq,
        masquerade_bit=bit,
        localhost_nodeports=_bool(ipt.get("localhostNodePorts"), "iptables.localhostNodePorts"),
        scheduler=_str(ipvs.get("scheduler"), "ipvs.scheduler") or None,
        strict_arp=_bool(ipvs.get("strictARP"), "ipvs.strictARP"),
        nft_masquerade_all=_bool(nft.get("masqueradeAll"), "nftables.masqueradeAll") if nft.get("masqueradeAll") is not None else top_masq,
        nft_masquerade_bit=_int(nft.get("masqueradeBit"), "nftables.masqueradeBit"),
    )


# --------------------------------------------------------------------------- entry points


# The API server's name rule for each kind the loader reads (its ValidateXName).
_NAME_RULES = {
    "Service": apinames.dns1035_label,
    "EndpointSlice": apinames.dns1123_subdomain,
    "Endpoints": apinames.dns1123_subdomain,
    "Node": apinames.dns1123_subdomain,
    "ServiceCIDR": apinames.dns1123_subdomain,
    "Pod": apinames.dns1123_subdomain,
    "ConfigMap": apinames.dns1123_subdomain,  # only kube-system/kube-proxy is read
    "Deployment": apinames.dns1123_subdomain,
    "ReplicaSet": apinames.dns1123_subdomain,
    "DaemonSet": apinames.dns1123_subdomain,
    # A StatefulSet's name becomes its pods' hostnames (NAME-0): an RFC 1123 label.
    "StatefulSet": apinames.dns1123_label,
}
_CLUSTER_SCOPED = ("Node", "ServiceCIDR", "KubeProxyConfiguration")
_PLAIN = re.compile(r"[A-Za-z0-9._-]{1,253}")


def _identify(doc: dict, kind: str) -> tuple[str, _Refused | None]:
    """The object's name as messages show it, and what in its metadata the API server refuses (or None).

    Names of another type or missing are left to `_meta`, which says so. Once
    per object, so the common case is a regex for the (distinct) name and set
    lookups for the rest.
    """
    meta = doc.get("metadata")
    if meta.__class__ is not dict:
        meta = {}
    name = meta.get("name")
    rule = _NAME_RULES.get(kind)
    if rule is None:  # a kind rulegen skips, or a KubeProxyConfiguration: no API object rules
        text = name if name.__class__ is str and _PLAIN.fullmatch(name) else "?"
        if kind == "ConfigMap":  # kube-proxy's is known by its namespace and name
            text = f"{_name_of(doc, True).rpartition('/')[0]}/{text}"
        return text, None
    refused = None
    if name.__class__ is not str or not name:
        text = "?"
    else:
        why = rule(name)
        if why:
            text = shown(name)
            refused = _Refused("metadata.name", f"{text} is not a valid {kind} name: {why}")
        else:
            text = name
            # Every valid label (RFC 1035 or 1123) of at most 63 characters is also a valid
            # label value, and a Service's name comes back as one: its app label, its
            # selector, its EndpointSlices' kubernetes.io/service-name.
            good_values = apinames.label_value.good
            if kind == "Service" and len(name) <= apinames.LABEL_MAX and len(good_values) < apinames.CACHE_MAX:
                good_values.add(name)
    if kind not in _CLUSTER_SCOPED:
        ns = meta.get("namespace")
        if ns.__class__ is not str or not ns:
            ns = "default"
        elif ns not in apinames.dns1123_label.good:
            why = apinames.dns1123_label(ns)
            if why:
                refused = refused or _Refused("metadata.namespace", f"{shown(ns)} is not a valid namespace: {why}")
                ns = shown(ns)
        text = f"{ns}/{text}"
    labels = meta.get("labels")
    if refused is None and labels and labels.__class__ is dict and not _known_labels(labels):
        try:
            _check_labels(labels, "metadata.labels")
        except _Refused as e:
            refused = e
    return text, refused


def _name_of(doc: dict, namespaced: bool) -> str:
    """`namespace/name` (or the name) as metadata gives it, for objects no name rule checks."""
    meta = doc.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    name = meta.get("name") if isinstance(meta.get("name"), str) else "?"
    if not namespaced:
        return name
    ns = meta.get("namespace")
    ns = ns if isinstance(ns, str) and _PLAIN.fullmatch(ns) else "default"
    return f"{ns}/{name}"


def _known_labels(labels: dict) -> bool:
    """Every key and value of LABELS already passed its check (two C-level set walks)."""
    good_keys, good_values = apinames.label_key.good, apinames.label_value.good
    for k, v in labels.items():
        if v.__class__ is not str or k not in good_keys or v not in good_values:
            return False
    return True


def load(paths: Iterable[str], report: Report) -> Inputs:
    """Read every object from `paths`; problems go to `report`."""
    return load_objects(iter_objects(paths), report)


def load_objects(objects: Iterable[tuple[Place, Any]], report: Report) -> Inputs:
    """Check and convert already-parsed objects (each with its place)."""
    inputs = Inputs([], [], [], [], [], [])
    for place, doc in objects:
        if not isinstance(doc, dict):
            report.add(place, "", f"expected a Kubernetes object (a mapping), got {_type_name(doc)} (left out)")
            continue
        if "__bad__" in doc:
            report.add(place, "items", doc["__bad__"])
            continue
        kind = doc.get("kind")
        if not isinstance(kind, str) or not kind:
            report.add(place, "kind", "missing (object left out)")
            continue
        name, refused = _identify(doc, kind)
        cx = _Ctx(Place(place.file, place.document, kind, name, place.item), report)
        try:
            if refused is not None:
                raise refused
            if kind == "Service":
                svc = _service(doc, cx)
                if svc is not None:
                    inputs.services.append(svc)
            elif kind == "EndpointSlice":
                inputs.slices.append(_endpoint_slice(doc, cx))
            elif kind == "Endpoints":
                inputs.slices.extend(_legacy_endpoints(doc, cx))
            elif kind == "Node":
                inputs.nodes.append(_node(doc, cx))
            elif kind == "ServiceCIDR":
                inputs.service_cidrs.append(_service_cidr(doc, cx))
            elif kind == "KubeProxyConfiguration":
                inputs.configs.append(config_from_dict(doc, cx))
            elif kind == "Pod":
                inputs.pods.append(_pod(doc, cx))
            elif kind in WORKLOAD_KINDS:
                inputs.workloads.append(_workload(doc, cx, kind))
            elif kind == "ConfigMap" and name == KUBE_PROXY_CONFIGMAP:
                inputs.configs.append(_kube_proxy_configmap(doc, cx))
            else:
                report.skip(kind)
        except _Bad as e:
            report.add(cx.place, e.field, e.message + " (object left out)")
        except _Refused as e:
            report.add(cx.place, e.field, f"{e.message} (the API server refuses the whole {kind}: left out)",
                       lint=REFUSED_SLUG)
        except RecursionError:  # a JSON value nested past what Python can print or walk
            raise UsageError(f"{cx.place}: {JSON_TOO_DEEP}") from None
    return inputs


# kubeadm keeps kube-proxy's configuration in this ConfigMap, under this key
# (`kubectl get cm -n kube-system kube-proxy -o yaml`); other ConfigMaps are
# skipped like any kind rulegen does not use.
KUBE_PROXY_CONFIGMAP = "kube-system/kube-proxy"
KUBE_PROXY_CONFIG_KEY = "config.conf"


class _Within(_Ctx):
    """Reports for the fields of a document held in one string field of the object."""

    __slots__ = ("prefix",)

    def __init__(self, cx: _Ctx, prefix: str):
        super().__init__(cx.place, cx.report)
        self.prefix = prefix

    def warn(self, fld: str, message: str) -> None:
        self.report.add(self.place, self.prefix + fld, message)

    def note(self, fld: str, message: str) -> None:
        self.report.add(self.place, self.prefix + fld, message, notice=True)


def _kube_proxy_configmap(doc: dict, cx: _Ctx) -> ProxyConfig:
    """The KubeProxyConfiguration in the ConfigMap's `config.conf` (YAML or JSON text)."""
    fld = f"data[{KUBE_PROXY_CONFIG_KEY}]"
    text = _map(doc.get("data"), "data").get(KUBE_PROXY_CONFIG_KEY)
    if text is None:
        raise _Bad(fld, "missing")
    if not isinstance(text, str):
        raise _Bad(fld, f"expected a string, got {_type_name(text)}")
    # Its text is held to the same bounds as a file; kube-proxy cannot start
    # without it, so text that is not YAML at all is unusable input (exit 2).
    docs = read_documents(f"{cx.place}: {fld}", text)
    if len(docs) != 1 or not isinstance(docs[0], dict):
        raise _Bad(fld, "expected one KubeProxyConfiguration document")
    conf = docs[0]
    if conf.get("kind") not in (None, "KubeProxyConfiguration"):
        raise _Bad(f"{fld}.kind", f"{conf.get('kind')!r} is not KubeProxyConfiguration")
    try:
        return config_from_dict(conf, _Within(cx, fld + "."))
    except _Bad as e:
        raise _Bad(f"{fld}.{e.field}", e.message) from None


def load_config_file(path: str, report: Report) -> ProxyConfig:
    """`--config FILE`: a KubeProxyConfiguration document, or kube-proxy's ConfigMap."""
    configs = [(place, doc) for place, doc in iter_objects([path]) if isinstance(doc, dict)]
    for place, doc in configs:
        kind = doc.get("kind")
        if kind in (None, "KubeProxyConfiguration"):
            cx = _Ctx(Place(path, place.document, "KubeProxyConfiguration", "config", place.item), report)
            try:
                return config_from_dict(doc, cx)
            except _Bad as e:
                raise UsageError(f"{cx.place}: {e.field}: {e.message}") from None
        if kind == "ConfigMap" and _identify(doc, kind) == (KUBE_PROXY_CONFIGMAP, None):
            cx = _Ctx(Place(path, place.document, kind, KUBE_PROXY_CONFIGMAP, place.item), report)
            try:
                return _kube_proxy_configmap(doc, cx)
            except _Bad as e:
                raise UsageError(f"{cx.place}: {e.field}: {e.message}") from None
    raise UsageError(f"{path}: no KubeProxyConfiguration document (nor kube-system/kube-proxy ConfigMap)")


def stdin_is_tty() -> bool:
    return os.isatty(0)
