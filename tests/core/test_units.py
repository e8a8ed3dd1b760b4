"""Input files cut into units (`rulegen.units`) decode exactly as the whole-file loader reads them.

The incremental compile parses only the units it has not seen; whatever
the cut, decoding every unit of a file in order (with the running document
count) must give the same objects with the same places as
`loader.iter_objects`, and the same `UsageError` message when the file is
not YAML/JSON. Digests name a unit by its bytes and by how it is read.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rulegen.diagnostics import UsageError
from rulegen.loader import iter_objects, objects_of, read_documents
from rulegen.units import DOCS, FILE, ITEM, JSON_DOC, Unit, cut, read_units


# --------------------------------------------------------------------------- helpers


def decode_units(units: list[Unit]) -> list[tuple[Any, Any]]:
    """Every unit decoded in order, the document count running per input file."""
    out: list[tuple[Any, Any]] = []
    before, seq = 0, -1
    for u in units:
        if u.seq != seq:
            before, seq = 0, u.seq
        objs, n = u.decode(before)
        assert n >= 0
        out.extend(objs)
        before += n
    return out


def outcome(fn) -> tuple[str, Any]:
    try:
        return "ok", fn()
    except UsageError as e:
        return "error", str(e)


def by_units(paths: list[str]) -> tuple[str, Any]:
    return outcome(lambda: decode_units(read_units(paths)))


def by_loader(paths: list[str]) -> tuple[str, Any]:
    return outcome(lambda: list(iter_objects(paths)))


def write(tmp: Path, name: str, text: str | bytes) -> str:
    p = tmp / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return str(p)


def assert_same(paths: list[str]) -> tuple[str, Any]:
    want = by_loader(paths)
    got = by_units(paths)
    assert got == want
    return want


SVC = """\
apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: default
spec:
  clusterIP: 10.96.0.{n}
  ports:
  - name: http
    port: 80
"""


def svc(name: str, n: int) -> str:
    return SVC.format(name=name, n=n)


# --------------------------------------------------------------------------- YAML, table-driven

# (id, text, how the file must be cut: the unit kinds, or None to not care)
YAML_CASES: list[tuple[str, str, list[str] | None]] = [
    ("plain three docs", svc("a", 1) + "---\n" + svc("b", 2) + "---\n" + svc("c", 3), [DOCS] * 3),
    ("leading marker", "---\n" + svc("a", 1) + "---\n" + svc("b", 2), [DOCS] * 2),
    ("comments between docs",
     "# head comment\n" + svc("a", 1) + "# trailing\n---\n# only a comment\n---\n\n# another\n" + svc("b", 2),
     [DOCS] * 3),
    ("empty documents", "---\n---\n" + svc("a", 1) + "---\n---\n---\n" + svc("b", 2) + "---\n", [DOCS] * 6),
    ("null documents count as none", "---\nnull\n---\n~\n---\n" + svc("a", 1) + "---\n" + svc("b", 2), [DOCS] * 4),
    ("markers with trailing blanks", svc("a", 1) + "---   \n" + svc("b", 2) + "---\t\n" + svc("c", 3) + "--- \t \n",
     [DOCS] * 4),
    ("CRLF line endings", (svc("a", 1) + "---\n" + svc("b", 2) + "---  \n" + svc("c", 3)).replace("\n", "\r\n"), None),
    ("BOM", "\ufeff" + svc("a", 1) + "---\n" + svc("b", 2), [DOCS] * 2),
    ("BOM before first marker", "\ufeff---\n" + svc("a", 1) + "---\n" + svc("b", 2), [DOCS] * 2),
    ("kind List document",
     svc("a", 1) + "---\napiVersion: v1\nkind: List\nitems:\n- " + svc("b", 2).replace("\n", "\n  ").rstrip()
     + "\n- " + svc("c", 3).replace("\n", "\n  ").rstrip() + "\n---\n" + svc("d", 4), [DOCS] * 3),
    ("List with items not a list", "kind: List\nitems: {a: 1}\n---\n" + svc("a", 1), [DOCS] * 2),
    ("List with items null", "kind: List\nitems:\n---\n" + svc("a", 1), [DOCS] * 2),
    ("ServiceList with items", "kind: ServiceList\nitems:\n- {kind: Service, metadata: {name: x}}\n---\n" + svc("a", 1),
     [DOCS] * 2),
    ("flow map on the marker line",
     svc("a", 1) + "--- {kind: Service, metadata: {name: f}}\n---\n" + svc("b", 2) + "--- {x: 1}\n", [DOCS] * 2),
    ("comment on the marker line", svc("a", 1) + "--- # the second\n" + svc("b", 2) + "---\n" + svc("c", 3),
     [DOCS] * 2),
    ("YAML directive", "%YAML 1.1\n---\n" + svc("a", 1) + "---\n" + svc("b", 2), [FILE]),
    ("TAG directive", "%TAG !k! tag:example.com,2024:\n---\n" + svc("a", 1) + "---\n" + svc("b", 2), [FILE]),
    ("document end markers", svc("a", 1) + "...\n---\n" + svc("b", 2) + "...\n", [FILE]),
    ("end marker then bare doc (libyaml refuses)", svc("a", 1) + "...\n" + svc("b", 2), [FILE]),
    ("block scalars",
     "kind: ConfigMap\nmetadata: {name: cm}\ndata:\n  script: |\n    echo a\n    ---\n    echo b\n  folded: >-\n"
     "    one\n    two\n---\n" + svc("a", 1) + "---\n--- |\n  top level text\n  ---\n---\n" + svc("b", 2),
     [DOCS] * 4),
    ("marker inside indented block scalar is content", "a: |\n  x\n  ---\n  y\n---\nb: 1\n", [DOCS] * 2),
    ("scalar and sequence docs", "just a string\n---\n- 1\n- 2\n---\n42\n---\n" + svc("a", 1), [DOCS] * 4),
    ("anchors per document", "a: &x {k: 1}\nb: *x\n---\nc: &x [1]\nd: *x\n", [DOCS] * 2),
    ("merge keys", "base: &b {kind: Service}\nobj:\n  <<: *b\n  n: 1\n---\n" + svc("a", 1), [DOCS] * 2),
    ("no marker at all", svc("a", 1), [DOCS]),
    ("only a marker", "---\n", [DOCS]),
    ("whitespace only", "  \n\n", None),
    ("empty file", "", None),
    ("marker at end without newline", svc("a", 1) + "---", [DOCS] * 2),
    ("not a marker: four dashes", svc("a", 1) + "----: 1\n----\t: 2\n", [DOCS]),
    ("stray text after a marker is an error", svc("a", 1) + "---\n" + "a: 1\nb\n" + "---\n" + svc("b", 2), [DOCS] * 3),
    ("plain scalar ended by marker", "a: some\n  long text\n---\nb: 2\n", [DOCS] * 2),
]


@pytest.mark.parametrize("text,hows", [(t, h) for _, t, h in YAML_CASES], ids=[i for i, _, _ in YAML_CASES])
@pytest.mark.parametrize("suffix", [".yaml", ".yml"])
def test_yaml_units_decode_like_the_whole_file(request, tmp_path, text, hows, suffix):
    path = write(tmp_path, "in" + suffix, text)
    kind, got = assert_same([path])
    assert kind == ("error" if "refuses" in request.node.callspec.id or "is an error" in request.node.callspec.id
                    else "ok"), got
    if hows is not None:
        assert [u.how for u in read_units([path])] == hows


@pytest.mark.parametrize("directive", ["%YAML 1.1", "%TAG !k! tag:yaml.org,2002:"])
def test_bom_before_a_directive(tmp_path, directive):
    text = "\ufeff" + directive + "\n---\n" + svc("a", 1) + "---\n" + svc("b", 2)
    path = write(tmp_path, "bom.yaml", text)
    want = by_loader([path])
    assert want[0] == "ok" and len(want[1]) == 2
    assert by_units([path]) == want


def test_yaml_places_count_documents_across_units(tmp_path):
    """The place of an object in a later unit numbers documents from the start of the file."""
    text = "---\n# nothing\n---\n" + svc("a", 1) + "--- # merged with the next\n" + svc("b", 2) + "---\n" + svc("c", 3)
    path = write(tmp_path, "s.yaml", text)
    units = read_units([path])
    assert len(units) == 3
    pairs = decode_units(units)
    assert [(p.document, o["metadata"]["name"]) for p, o in pairs] == [(1, "a"), (2, "b"), (3, "c")]
    # The last unit decoded on its own with the wrong count would misplace it.
    objs, n = units[-1].decode(0)
    assert n == 1 and objs[0][0].document == 1


def test_several_files_count_documents_per_file(tmp_path):
    a = write(tmp_path, "a.yaml", svc("a", 1) + "---\n" + svc("b", 2))
    b = write(tmp_path, "b.yaml", svc("c", 3) + "---\n" + svc("d", 4))
    j = write(tmp_path, "c.json", json.dumps({"kind": "List", "items": [yaml.safe_load(svc("e", 5))]}))
    kind, pairs = assert_same([str(tmp_path)])
    assert kind == "ok"
    assert [(Path(p.file).name, p.document, p.item) for p, _ in pairs] == [
        ("a.yaml", 1, 0), ("a.yaml", 2, 0), ("b.yaml", 1, 0), ("b.yaml", 2, 0), ("c.json", 1, 1)]
    # The same file given twice: its documents are numbered from 1 both times.
    kind, pairs = assert_same([a, b, a, j])
    assert [p.document for p, _ in pairs] == [1, 2, 1, 2, 1, 2, 1]


def test_crlf_text_cut_directly(tmp_path):
    """Files are read with universal newlines; text with CRLF given to `cut` must still cut soundly."""
    text = ("# c\r\n" + svc("a", 1) + "---\n" + svc("b", 2) + "---  \n\n" + svc("c", 3)).replace("\n", "\r\n")
    units = cut("x.yaml", text)
    assert [u.how for u in units] == [DOCS] * 3
    assert decode_units(units) == list(objects_of("x.yaml", read_documents("x.yaml", text)))


# --------------------------------------------------------------------------- YAML, generated

names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=8)
scalars = st.one_of(names, st.integers(-5, 70000), st.booleans(), st.none(), st.sampled_from(["---", "...", "%x", "- a", "a\n---\nb", "x\n...\n", "\n--- \n", "\ufeff---"]))
values = st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(names, c, max_size=3)),
                      max_leaves=8)


@st.composite
def k8s_doc(draw):
    kind = draw(st.sampled_from(["Service", "EndpointSlice", "Node", "ConfigMap", "List", "ServiceList", None]))
    doc: dict[str, Any] = {}
    if kind is not None:
        doc["kind"] = kind
    if kind in ("List", "ServiceList"):
        if draw(st.booleans()):
            doc["items"] = draw(st.lists(st.one_of(k8s_doc(), values), max_size=3))
        else:
            doc["items"] = draw(st.one_of(st.none(), values))
    else:
        doc["metadata"] = {"name": draw(names), "namespace": draw(st.sampled_from(["default", "x"]))}
        doc["spec"] = draw(values)
    return doc


documents = st.one_of(k8s_doc(), k8s_doc(), values)


def _body(doc: Any, flow: bool) -> str:
    return yaml.safe_dump(doc, default_flow_style=flow, allow_unicode=True, sort_keys=False)


SEPARATORS = ["---\n", "---\n", "---  \n", "---\t\n", "--- # note\n", "---\n# note\n", "# note\n---\n",
              "\n---\n\n", "---\n---\n", "--- \n...\n---\n"]


@st.composite
def multidoc(draw) -> str:
    parts: list[str] = []
    if draw(st.integers(0, 9)) == 0:
        parts.append("%YAML 1.1\n---\n")
    elif draw(st.booleans()):
        parts.append(draw(st.sampled_from(["---\n", "# top\n", "---\n# top\n", "\n"])))
    for i in range(draw(st.integers(1, 6))):
        if i:
            parts.append(draw(st.sampled_from(SEPARATORS)))
        shape = draw(st.integers(0, 9))
        doc = draw(documents)
        if shape == 0:
            # the document on the marker line, in flow style
            parts.append("--- " + json.dumps(doc) + "\n")
        elif shape == 1:
            parts.append("--- |\n  text of a block\n  ---\n  more\n")
        elif shape == 2:
            parts.append("key: >\n  folded\n  ---\n\n  tail\nnext: |-\n  x\n")
        elif shape == 3:
            # quoted scalars running over a marker line (an error for PyYAML)
            parts.append(draw(st.sampled_from(['a: "multi\n---\nline"\n', "a: 'x\n---\n  y'\n",
                                               "a: [1,\n---\n2]\n", "a: 'fine\n\n  ---\n  y'\n"])))
        else:
            parts.append(_body(doc, draw(st.booleans())))
    text = "".join(parts)
    if draw(st.integers(0, 5)) == 0 and not text.startswith("%"):
        # (a BOM before a directive: test_bom_before_a_directive, a known bug)
        text = "\ufeff" + text
    return text


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(multidoc(), st.booleans(), st.sampled_from([".yaml", ".yml", ".txt"]))
def test_generated_multidoc_yaml_decodes_like_the_whole_file(text, crlf, suffix):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        data = (text.replace("\n", "\r\n") if crlf else text).encode("utf-8")
        path = write(Path(d), "gen" + suffix, data)
        assert_same([path])
    # And given to the cutter directly (no newline translation on the way).
    raw = text.replace("\n", "\r\n") if crlf else text
    name = "gen" + suffix
    assert outcome(lambda: decode_units(cut(name, raw))) == outcome(
        lambda: list(objects_of(name, read_documents(name, raw))))


# --------------------------------------------------------------------------- invalid YAML

BAD_THIRD = [
    ("unclosed flow sequence", "metadata: {name: [unclosed\nspec: 1\n"),
    ("bad indentation", "a:\n  b: 1\n c: 2\n"),
    ("unclosed quote runs into the next marker", 'a: "never closed\n  still\n'),
    ("tab indentation", "a:\n\tb: 1\n"),
    ("undefined alias", "a: *nowhere\n"),
    ("mapping in a scalar", "a: b: c\n"),
]


@pytest.mark.parametrize("bad", [b for _, b in BAD_THIRD], ids=[i for i, _ in BAD_THIRD])
def test_invalid_yaml_in_third_document_reports_the_whole_files_line(tmp_path, bad):
    text = ("# header\n\n" + svc("a", 1) + "---\n" + svc("b", 2) + "---\n" + "# comment\n" + bad
            + "---\n" + svc("d", 4))
    path = write(tmp_path, "bad.yaml", text)
    units = read_units([path])
    assert [u.how for u in units] == [DOCS] * 4
    want = by_loader([path])
    assert want[0] == "error"
    got = by_units([path])
    assert got == want
    # The line is the whole file's, not the unit's.
    m = re.search(r"\(line (\d+), column \d+\)", want[1])
    if m:
        assert int(m.group(1)) > text.count("\n", 0, text.index(bad))
    # The cut unit alone fails too, with the same message.
    before = sum(u.decode()[1] for u in units[:2])
    with pytest.raises(UsageError) as e:
        units[2].decode(before)
    assert str(e.value) == want[1]


def test_not_text_is_the_same_usage_error(tmp_path):
    path = write(tmp_path, "bin.yaml", b"a: 1\n---\n\xff\xfe\x00\n")
    want = by_loader([path])
    assert want[0] == "error" and "not a text file" in want[1]
    assert by_units([path]) == want


def test_missing_file_is_the_same_usage_error(tmp_path):
    assert by_units([str(tmp_path / "nope.yaml")]) == by_loader([str(tmp_path / "nope.yaml")])
    assert by_loader([str(tmp_path / "nope.yaml")])[0] == "error"


def test_control_character_in_a_later_document(tmp_path):
    path = write(tmp_path, "ctl.yaml", svc("a", 1) + "---\n" + "a: \x07bell\n" + "---\n" + svc("b", 2))
    want = by_loader([path])
    assert want[0] == "error"
    assert by_units([path]) == want


# --------------------------------------------------------------------------- JSON


def _svc_obj(name: str, n: int) -> dict:
    return yaml.safe_load(svc(name, n))


LIST = {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""},
        "items": [_svc_obj("a", 1), _svc_obj("b", 2), {"kind": "ConfigMap", "metadata": {"name": "c"}}, _svc_obj("d", 4)]}

JSON_CASES: list[tuple[str, str, str, list[str] | None]] = [
    ("List file", "l.json", json.dumps(LIST, indent=2), [ITEM] * 4),
    ("compact List file", "l.json", json.dumps(LIST, separators=(",", ":")), [ITEM] * 4),
    ("List with leading blank lines", "l.json", "\n\n  " + json.dumps(LIST), [ITEM] * 4),
    ("single object", "o.json", json.dumps(_svc_obj("a", 1)), [FILE]),
    ("top-level array", "a.json", json.dumps([_svc_obj("a", 1), _svc_obj("b", 2)]), [FILE]),
    ("empty object", "e.json", "{}", [FILE]),
    ("invalid JSON", "bad.json", '{"kind": "List", "items": [', [FILE]),
    ("trailing garbage", "bad.json", json.dumps(LIST) + " x", [FILE]),
    ("two JSON objects", "two.json", json.dumps(_svc_obj("a", 1)) + "\n" + json.dumps(_svc_obj("b", 2)),
     [JSON_DOC, JSON_DOC]),
    ("two JSON objects, no blank between", "two.json", json.dumps(_svc_obj("a", 1)) + json.dumps(_svc_obj("b", 2)),
     [JSON_DOC, JSON_DOC]),
    ("two Lists in a row", "two.json", json.dumps(LIST, indent=2) + "\n" + json.dumps(LIST), [ITEM] * 8),
    ("a List, an object, a ServiceList", "three.json",
     json.dumps(LIST) + "\n\n" + json.dumps(_svc_obj("e", 5)) + " \t\r\n"
     + json.dumps({"kind": "ServiceList", "apiVersion": "v1", "items": [
         {k: v for k, v in _svc_obj("f", 6).items() if k not in ("kind", "apiVersion")}]}) + "\n",
     [ITEM] * 4 + [JSON_DOC, ITEM]),
    ("an array and an object in a row", "ao.json", json.dumps([_svc_obj("a", 1)]) + json.dumps(_svc_obj("b", 2)),
     [JSON_DOC, JSON_DOC]),
    ("objects in a row, NaN in the second", "nan.json", json.dumps(LIST) + '\n{"kind": "X", "v": NaN}', [FILE]),
    ("objects in a row, garbage after", "bad.json", json.dumps(LIST) + "\n" + json.dumps(LIST) + " x", [FILE]),
    ("objects in a row in a .yaml file", "two.yaml", json.dumps(LIST) + "\n" + json.dumps(_svc_obj("b", 2)),
     [ITEM] * 4 + [JSON_DOC]),
    ("JSON then YAML in a .yaml file", "jy.yaml", json.dumps(_svc_obj("a", 1)) + "\n---\n" + svc("b", 2), [FILE]),
    ("ServiceList items without kind", "s.json", json.dumps({"kind": "ServiceList", "apiVersion": "v1", "items": [
        {k: v for k, v in _svc_obj("a", 1).items() if k not in ("kind", "apiVersion")}, _svc_obj("b", 2),
        {"kind": "ConfigMap", "metadata": {"name": "own-kind"}}, {"kind": None, "metadata": {"name": "n"}}]}),
     [ITEM] * 4),
    ("YAML in a .json file", "y.json", svc("a", 1) + "---\n" + svc("b", 2), [FILE]),
    ("ServiceList with items", "s.json", json.dumps({"kind": "ServiceList", "items": [_svc_obj("a", 1)]}), [ITEM]),
    ("ServiceList without items", "s.json", json.dumps({"kind": "ServiceList", "spec": {}}), [FILE]),
    ("items null", "n.json", json.dumps({"kind": "List", "items": None}), [FILE]),
    ("items empty", "n.json", json.dumps({"kind": "List", "items": []}), [FILE]),
    ("items missing", "n.json", json.dumps({"kind": "List"}), [FILE]),
    ("items not a list", "n.json", json.dumps({"kind": "List", "items": {"a": 1}}), [FILE]),
    ("items a string", "n.json", json.dumps({"kind": "List", "items": "x"}), [FILE]),
    ("kind null with items", "n.json", json.dumps({"kind": None, "items": [_svc_obj("a", 1)]}), [FILE]),
    ("kind a number", "n.json", json.dumps({"kind": 5, "items": [_svc_obj("a", 1)]}), [FILE]),
    ("null and scalar items", "n.json", json.dumps({"kind": "List", "items": [None, 3, "x", [], _svc_obj("a", 1)]}),
     [ITEM] * 5),
    ("nested List item", "n.json", json.dumps({"kind": "List", "items": [{"kind": "List", "items": [_svc_obj("a", 1)]}]}),
     [ITEM]),
    ("duplicate items key: the last wins", "d.json",
     '{"kind": "List", "items": [{"kind": "A"}], "items": [{"kind": "B"}, {"kind": "C"}]}', None),
    ("duplicate kind key: the last wins", "d.json", '{"kind": "List", "items": [{"kind": "A"}], "kind": "Thing"}', None),
    ("NaN in an item", "f.json", '{"kind": "List", "items": [{"kind": "X", "v": Infinity}]}', None),
    ("huge number in an item", "f.json", '{"kind": "List", "items": [{"kind": "X", "v": 1e400, "i": 123456789012345678901234567890}]}', None),
    ("unicode", "u.json", json.dumps({"kind": "List", "items": [{"kind": "Ä", "m": "\u2028 ✓ \U0001f600"}]}, ensure_ascii=False),
     [ITEM]),
    ("escaped unicode", "u.json", json.dumps({"kind": "List", "items": [{"kind": "Ä", "m": "\u2028 ✓ \U0001f600"}]}), [ITEM]),
    ("BOM", "b.json", "\ufeff" + json.dumps(LIST), [FILE]),
    ("JSON List in a .yaml file", "l.yaml", json.dumps(LIST), [ITEM] * 4),
    ("JSON List in a .yml file after blanks", "l.yml", "\n \t" + json.dumps(LIST), [ITEM] * 4),
    ("flow YAML in a .yaml file starting with a brace", "f.yaml", "{kind: List, items: [{kind: Service}]}", [FILE]),
    ("flow YAML sequence in a .yaml file", "f.yaml", "[{kind: Service}, 1]\n", [FILE]),
    ("invalid JSON-looking .yaml", "f.yaml", "{ not: [closed\n", [FILE]),
]


@pytest.mark.parametrize("name,text,hows", [c[1:] for c in JSON_CASES], ids=[c[0] for c in JSON_CASES])
def test_json_units_decode_like_the_whole_file(tmp_path, name, text, hows):
    path = write(tmp_path, name, text)
    assert_same([path])
    if hows is not None:
        assert [u.how for u in read_units([path])] == hows


def whole_document(name: str, text: str) -> tuple[str, Any]:
    """The oracle for streamed Lists: the whole file decoded as one document, then unpacked."""
    return outcome(lambda: list(objects_of(name, read_documents(name, text))))


@pytest.mark.parametrize("name,text", [c[1:3] for c in JSON_CASES], ids=[c[0] for c in JSON_CASES])
def test_streamed_json_list_reads_like_the_whole_document(tmp_path, name, text):
    """`iter_objects` decodes a List's items one at a time; the result is the whole-file decode's."""
    path = write(tmp_path, name, text)
    assert by_loader([path]) == whole_document(path, text)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(k8s_doc(), values), min_size=1, max_size=5),
       st.sampled_from(["List", "ServiceList", "EndpointSliceList"]), st.booleans())
def test_generated_json_lists_stream_like_the_whole_document(items, kind, indent):
    import tempfile

    text = json.dumps({"kind": kind, "items": items}, indent=1 if indent else None, ensure_ascii=indent)
    with tempfile.TemporaryDirectory() as d:
        path = write(Path(d), "gen.json", text)
        got = by_loader([path])
        assert got == whole_document(path, text)
    assert got[0] == "ok" and [p.item for p, _ in got[1]] == list(range(1, len(items) + 1))


def test_json_list_items_are_decoded_one_at_a_time(tmp_path, monkeypatch):
    """No tree of the whole List is built first: item k is decoded when object k is asked for."""
    import rulegen.loader as loader_mod

    calls: list[int] = []
    real = loader_mod.decode_item
    monkeypatch.setattr(loader_mod, "decode_item", lambda raw: calls.append(1) or real(raw))
    it = iter_objects([write(tmp_path, "l.json", json.dumps(LIST))])
    place, obj = next(it)
    assert (len(calls), place.item, obj["metadata"]["name"]) == (1, 1, "a")
    assert len(list(it)) == 3 and len(calls) == 4


def test_yaml_documents_are_built_one_at_a_time(tmp_path):
    """Document k is built when object k is asked for: a broken third document is only met there."""
    path = write(tmp_path, "m.yaml", svc("a", 1) + "---\n" + svc("b", 2) + "---\nkind: [unclosed\n")
    it = iter_objects([path])
    assert [next(it)[1]["metadata"]["name"] for _ in range(2)] == ["a", "b"]
    with pytest.raises(UsageError, match=r"m.yaml: not valid YAML \(line 24, column 1\)"):
        next(it)
    assert by_loader([path]) == whole_document(path, open(path).read())


@pytest.mark.parametrize("data", [b'{"kind": "List", "items": [{"kind": "Service", "x": "\xff"}]}',
                                  b'kind: Service\nx: "\xff"\n'], ids=["JSON List", "YAML"])
def test_bad_utf8_on_stdin_is_a_usage_error_like_a_files(tmp_path, monkeypatch, data):
    """Bytes that are not UTF-8 on standard input: the file's message, not a traceback."""
    import io

    want = by_loader([write(tmp_path, "x.json", data)])
    assert want == ("error", f"{tmp_path}/x.json: not a text file (YAML or JSON expected)")
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data), errors="surrogateescape"))
    assert by_loader(["-"]) == ("error", "<stdin>: not a text file (YAML or JSON expected)")


def test_json_list_places_are_item_numbers(tmp_path):
    path = write(tmp_path, "l.json", json.dumps(LIST))
    kind, pairs = assert_same([path])
    assert kind == "ok"
    assert [(p.document, p.item) for p, _ in pairs] == [(1, 1), (1, 2), (1, 3), (1, 4)]
    units = read_units([path])
    objs, n = units[2].decode(0)
    assert n == 1 and objs[0][0].item == 3 and objs[0][1]["kind"] == "ConfigMap"


def test_invalid_json_is_the_loaders_usage_error(tmp_path):
    for name, text in [("bad.json", '{"kind": "List", "items": ['), ("y.json", "kind: Service\n---\nkind: Service\n"),
                       ("n.json", '{"kind": NaN')]:
        path = write(tmp_path, name, text)
        want = by_loader([path])
        assert want[0] == "error" and "not valid JSON" in want[1], want
        assert by_units([path]) == want


# --------------------------------------------------------------------------- digests


def test_same_bytes_same_digest_across_calls():
    text = json.dumps(LIST)
    a = [u.digest for u in cut("l.json", text)]
    b = [u.digest for u in cut("other-name.json", text)]
    assert a == b and len(set(a)) == 4
    y = svc("a", 1) + "---\n" + svc("b", 2)
    assert [u.digest for u in cut("x.yaml", y)] == [u.digest for u in cut("x.yaml", y)]
    assert Unit("f", FILE, b"abc").digest == Unit("g", FILE, b"abc").digest


def test_json_and_yaml_whole_files_of_the_same_text_differ():
    text = "[1, 2]\n"  # a whole file either way: not a List
    (j,) = cut("a.json", text)
    (y,) = cut("a.yaml", text)
    assert j.how == y.how == FILE
    assert bytes(j.data) == bytes(y.data)
    assert j.digest != y.digest


def test_how_a_unit_is_read_is_part_of_its_digest():
    data = b'{"kind": "Service"}'
    ds = {Unit("x.json", ITEM, data, item=1).digest, Unit("x.yaml", DOCS, data).digest,
          Unit("x.json", FILE, data).digest, Unit("x.yaml", FILE, data).digest}
    assert len(ds) == 4


def test_one_changed_byte_changes_only_its_items_digest():
    before = json.dumps(LIST, indent=1)
    after_list = json.loads(before)
    after_list["items"][1]["spec"]["ports"][0]["port"] = 81
    after = json.dumps(after_list, indent=1)
    assert sum(a != b for a, b in zip(before, after)) == 1 and len(before) == len(after)
    d0 = [u.digest for u in cut("l.json", before)]
    d1 = [u.digest for u in cut("l.json", after)]
    assert len(d0) == len(d1) == 4
    assert [a == b for a, b in zip(d0, d1)] == [True, False, True, True]


def test_one_changed_byte_changes_only_its_documents_digest():
    before = svc("a", 1) + "---\n" + svc("b", 2) + "---\n" + svc("c", 3)
    after = before.replace("10.96.0.2\n", "10.96.0.9\n")
    assert before != after
    d0 = [u.digest for u in cut("x.yaml", before)]
    d1 = [u.digest for u in cut("x.yaml", after)]
    assert [a == b for a, b in zip(d0, d1)] == [True, False, True]
