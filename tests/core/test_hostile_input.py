"""Hostile documents: alias bombs, deep nesting and huge inputs are exit 2, one line, bounded in memory and work.

The bombs run in a child process with its address space capped (RLIMIT_AS),
which reports its own peak RSS (VmHWM): a regression shows as a MemoryError
or a peak far above the ~30 MB rulegen needs to refuse them. Work is counted, not
timed: the YAML builder is never called on a bomb.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import rulegen.loader as loader
from rulegen.cli import main
from rulegen.diagnostics import Problem, Place, Report, UsageError
from rulegen.pipeline import compile_files, compile_files_cached

SVC = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  clusterIP: 10.96.0.9\n  ports: [{port: 80}]\n"


def laughs(levels: int = 9, width: int = 9) -> str:
    """A billion-laughs document: each level an anchored list of WIDTH aliases of the level below."""
    lines = ["apiVersion: v1", "kind: ConfigMap", "metadata: {name: lol}", "data:",
             "  l0: &l0 [" + ", ".join(['"lol"'] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def merge_bomb(levels: int = 40) -> str:
    """Merge keys doubling at each level: PyYAML's flattening would build 2^LEVELS entries."""
    lines = ["m0: &m0 {a: 1, b: 2}"]
    for i in range(1, levels):
        lines.append(f"m{i}: &m{i}\n  <<: [*m{i - 1}, *m{i - 1}]\n  k{i}: 1")
    return "\n".join(lines) + "\n"


def nested_yaml(levels: int, flow: bool) -> str:
    """A mapping whose value is LEVELS-1 sequences deep: LEVELS collections nested in all."""
    if flow:
        return "a: " + "[" * (levels - 1) + "]" * (levels - 1) + "\n"
    return "a:\n" + "".join("  " * i + "-\n" for i in range(levels - 2)) + "  " * (levels - 2) + "- x\n"


def nested_json(levels: int) -> str:
    return "[" * levels + "]" * levels


# --------------------------------------------------------------------------- in a child, memory capped

CHILD = textwrap.dedent("""
    import resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
    from rulegen.cli import main
    code = 0
    try:
        main(sys.argv[1:], prog_name="rulegen")
    except SystemExit as e:
        code = e.code
    # VmHWM, not ru_maxrss: after fork and exec, ru_maxrss still counts the parent's pages
    with open("/proc/self/status") as f:
        print(next(l.split()[1] for l in f if l.startswith("VmHWM:")), file=sys.stderr)
    sys.exit(code)
""")


def run_capped(args: list[str], stdin: bytes | None = None, env: dict | None = None) -> tuple[int, str, int]:
    """`rulegen ARGS` in a child with 1 GiB of address space: exit code, its stderr lines but the last, peak RSS KiB."""
    r = subprocess.run([sys.executable, "-c", CHILD, *args], input=stdin, capture_output=True, timeout=300,
                       env={**os.environ, **(env or {})})
    *lines, peak = r.stderr.decode().splitlines()
    return r.returncode, "\n".join(lines), int(peak)


PEAK_KIB = 100 << 10  # a refused bomb needs the interpreter and rulegen (~25 MB), not the bomb


@pytest.mark.parametrize("name,text,message", [
    ("lol.yaml", laughs(), "document 1: its aliases would expand 38 nodes to 490,329,074, more than the 100,038 "
                           "rulegen builds (an alias bomb?)"),
    ("merge.yaml", merge_bomb(), "document 1: its aliases would expand 241 nodes to 10,995,116,277,591, more than "
                                 "the 100,241 rulegen builds (an alias bomb?)"),
    ("deep.yaml", nested_yaml(5000, flow=True), "not valid YAML (line 1, column 1003): exceeded maximum nesting depth"),
    ("deep-block.yaml", nested_yaml(500, flow=False), "document 1, line 201: nested deeper than 200 levels"),
    ("deep.json", nested_json(100_000), "nested deeper than rulegen can read"),
    ("item.json", '{"kind": "List", "items": [{"kind": "Service"}, ' + nested_json(5000) + "]}",
     "nested deeper than rulegen can read"),
])
def test_bombs_are_exit_2_in_bounded_memory(tmp_path, name, text, message):
    p = tmp_path / name
    p.write_text(text)
    code, err, peak = run_capped(["compile", str(p)])
    assert (code, err) == (2, f"rulegen: error: {p}: {message}")
    assert peak < PEAK_KIB
    code, err, peak = run_capped(["compile", "-"], stdin=text.encode())
    assert (code, err) == (2, f"rulegen: error: <stdin>: {message}")
    assert peak < PEAK_KIB


def test_an_alias_bomb_is_never_built(tmp_path, monkeypatch):
    calls = []
    real = loader._build
    monkeypatch.setattr(loader, "_build", lambda *a: calls.append(1) or real(*a))
    # 9^6 = 531,441 nodes: past the allowance, yet small enough to build quickly should the check ever go
    with pytest.raises(UsageError, match="an alias bomb"):
        loader.read_documents("x.yaml", laughs(levels=6))
    assert calls == []
    with pytest.raises(UsageError, match="an alias bomb"):
        loader.read_documents("x.yaml", SVC + "---\n" + merge_bomb())
    assert len(calls) < 100  # the first document only


def test_depth_200_is_read_and_201_is_not():
    for flow in (True, False):
        doc = loader.read_documents("x.yaml", nested_yaml(200, flow))[0]
        depth = 0
        while isinstance(doc, (dict, list)):
            depth += 1
            doc = doc["a"] if isinstance(doc, dict) else (doc[0] if doc else None)
        assert depth == 200
        with pytest.raises(UsageError, match=r"x.yaml: document 1, line \d+: nested deeper than 200 levels"):
            loader.read_documents("x.yaml", nested_yaml(201, flow))


def test_depth_is_checked_on_pyyaml_path_and_through_aliases():
    deep = "[" * 200 + "]" * 200
    # a merge key hands the document to PyYAML's constructor, which recurses too
    with pytest.raises(UsageError, match="document 2, line 9: nested deeper than 200 levels"):  # line in the file
        loader.read_documents("x.yaml", SVC + "---\n<<: {a: 1}\nb: " + deep + "\n")
    # an anchor 150 levels deep used 100 levels down: 250 once expanded
    half = "[" * 149 + "]" * 149
    text = f"a: &x {half}\nb: " + "[" * 99 + "*x" + "]" * 99 + "\n"
    with pytest.raises(UsageError, match="nested deeper than 200 levels"):
        loader.read_documents("x.yaml", text)
    assert loader.read_documents("x.yaml", f"a: &x {half}\nb: [*x, *x]\n")


def test_recursive_alias_is_exit_2():
    r = CliRunner().invoke(main, ["compile", "-"], input=SVC + "---\na: &a [1, *a]\n")
    assert r.exit_code == 2
    assert r.stderr == ("rulegen: error: <stdin>: document 2, line 8: "
                        "a recursive alias (an alias inside the node it names)\n")


def test_moderate_alias_use_is_read_like_pyyaml():
    # anchors shared a few thousand times: well inside the allowance, built as PyYAML builds them
    text = "common: &c {app: web, tier: front, env: prod}\nitems:\n" + "".join(
        f"- {{name: n{i}, labels: *c}}\n" for i in range(5000))
    assert loader.read_documents("x.yaml", text) == [yaml.load(text, Loader=yaml.CSafeLoader)]


@pytest.mark.parametrize("text", ["a: 'x=1&y=2'\n", "url: http://h/?a=1&b=2\n", "- a & b\n", "k: v&w\n"])
def test_ampersands_that_are_no_anchors_skip_the_graph_check(text):
    assert not loader._may_have_anchors(text)
    assert loader.read_documents("x.yaml", text) == [yaml.safe_load(text)]


def anchored(event) -> bool:
    """An event that defines an anchor (an alias event names one it uses)."""
    return isinstance(event, yaml.NodeEvent) and not isinstance(event, yaml.AliasEvent) and bool(event.anchor)


@pytest.mark.parametrize("text", ["&a x\n", "a: &x 1\nb: *x\n", "- &x 1\n- *x\n", "[&x 1, *x]\n", "{a: &x 1, b: *x}\n",
                                  '{"a":&x 1, "b": *x}\n', "--- &x\na: 1\n", "? &k a\n: 1\n", "a: !!str &x b\n",
                                  "a:\n\t&x [1]\n"])
def test_every_anchor_form_is_seen(text):
    try:
        events = list(yaml.parse(text, Loader=yaml.CSafeLoader))
    except yaml.YAMLError:
        return  # not YAML libyaml reads: nothing to build
    assert any(anchored(e) for e in events)
    assert loader._may_have_anchors(text)


@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet="&*ab1 :-[]{},\n\t\"'!?#|>.=/%_", max_size=30))
def test_no_anchor_libyaml_reads_is_missed(text):
    """Text the graph check skips never holds an anchor: whatever libyaml reads, `_may_have_anchors` sees."""
    try:
        events = list(yaml.parse(text, Loader=yaml.CSafeLoader))
    except yaml.YAMLError:
        return
    if any(anchored(e) for e in events):
        assert loader._may_have_anchors(text)


# --------------------------------------------------------------------------- JSON depth


def test_json_deep_everywhere_is_one_line(tmp_path):
    deep = nested_json(3000)
    cases = {
        "whole.json": deep,
        "obj.json": '{"kind": "Service", "spec": ' + deep + "}",
        "list.json": '{"kind": "List", "items": [' + deep + "]}",
        "row.json": '{"kind": "Service", "metadata": {"name": "a"}}\n' + deep,
        "looks.yaml": '{"kind": "List", "items": [' + deep + "]}",
    }
    for name, text in cases.items():
        p = tmp_path / name
        p.write_text(text)
        r = CliRunner().invoke(main, ["compile", str(p)])
        assert r.exit_code == 2, (name, r.output)
        assert r.stderr.startswith(f"rulegen: error: {p}") and r.stderr.endswith(
            "nested deeper than rulegen can read\n"), (name, r.stderr)
        with pytest.raises(UsageError, match=f"^{p}: nested deeper than rulegen can read$"):
            loader.read_documents(str(p), text)  # the whole-file reader (a FILE unit, the ConfigMap's text)


def test_a_deep_value_that_decodes_is_reported_in_one_bounded_line(tmp_path):
    p = tmp_path / "s.json"
    p.write_text('{"kind": "Service", "metadata": {"name": "a"}, "spec": {"clusterIP": "10.96.0.1", '
                 '"ports": [{"port": 80}], "externalIPs": [' + nested_json(400) + "]}}")
    r = CliRunner().invoke(main, ["compile", str(p)])
    assert r.exit_code == 0
    (line,) = r.stderr.splitlines()
    assert len(line) <= 600 and "characters left out" in line and line.endswith("is not a valid IP address (left out)")


def test_problem_lines_are_bounded():
    p = Problem(Place("f.yaml", 1, "Service", "a/b"), "spec.clusterIP", "'" + "x" * 100_000 + "' is not valid")
    s = str(p)
    assert len(s) <= 600 and s.startswith("f.yaml: document 1 (Service a/b): spec.clusterIP: 'xxx")
    assert s.endswith("xxx' is not valid") and "(99,5" in s


# --------------------------------------------------------------------------- size


def test_a_file_over_the_limit_is_refused_before_it_is_read(tmp_path):
    p = tmp_path / "huge.yaml"
    with open(p, "wb") as f:
        f.truncate(3 << 30)  # sparse: 3 GiB that cost nothing until read
    code, err, peak = run_capped(["compile", str(p)])
    assert (code, err) == (2, f"rulegen: error: {p}: 3 GiB, more than the 128 MiB rulegen reads from one input "
                              f"(RULEGEN_MAX_INPUT_SIZE=SIZE raises the limit)")
    assert peak < PEAK_KIB


def test_the_limit_can_be_set_and_lifted(tmp_path, monkeypatch):
    p = tmp_path / "svc.yaml"
    p.write_text(SVC)  # 102 bytes
    monkeypatch.setenv("RULEGEN_MAX_INPUT_SIZE", "64")
    r = CliRunner().invoke(main, ["compile", str(p)])
    assert (r.exit_code, r.stderr) == (2, f"rulegen: error: {p}: 102 bytes, more than the 64 bytes rulegen reads "
                                          "from one input (RULEGEN_MAX_INPUT_SIZE=SIZE raises the limit)\n")
    r = CliRunner().invoke(main, ["compile", "-"], input=SVC)
    assert r.exit_code == 2 and r.stderr.startswith("rulegen: error: <stdin>: more than the 64 bytes")
    for ok in ("102", "1K", "2 KiB", "1m", "0"):
        monkeypatch.setenv("RULEGEN_MAX_INPUT_SIZE", ok)
        assert CliRunner().invoke(main, ["compile", str(p)]).exit_code == 0, ok
        assert CliRunner().invoke(main, ["compile", "-"], input=SVC).exit_code == 0, ok
    monkeypatch.setenv("RULEGEN_MAX_INPUT_SIZE", "lots")
    r = CliRunner().invoke(main, ["compile", str(p)])
    assert r.exit_code == 2 and "RULEGEN_MAX_INPUT_SIZE: 'lots' is not a size" in r.stderr


def test_a_pipe_over_the_limit_is_cut_off(tmp_path, monkeypatch):
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    monkeypatch.setenv("RULEGEN_MAX_INPUT_SIZE", "1K")

    def feed():
        try:
            with open(fifo, "w") as f:
                for _ in range(1000):  # 88 KB offered; the reader stops after 1 KiB
                    f.write(SVC + "---\n")
        except BrokenPipeError:
            pass

    t = threading.Thread(target=feed, daemon=True)
    t.start()
    r = CliRunner().invoke(main, ["compile", str(fifo)])
    t.join(timeout=30)
    assert (r.exit_code, r.stderr) == (2, f"rulegen: error: {fifo}: more than the 1 KiB rulegen reads from one "
                                          "input (RULEGEN_MAX_INPUT_SIZE=SIZE raises the limit)\n")


def test_the_default_holds_a_10k_service_cluster_twice_over():
    from rulegen.bench.gen import generate, to_yaml

    per_service = len(to_yaml(generate(200, 10, seed=1)).encode()) / 200
    assert 2 * 10_000 * per_service < loader.MAX_INPUT_DEFAULT


# --------------------------------------------------------------------------- the incremental compile


@pytest.mark.parametrize("name,text,env", [
    ("lol.yaml", SVC + "---\n" + laughs(), {}),
    ("deep.yaml", SVC + "---\n" + nested_yaml(300, flow=False), {}),
    ("item.json", '{"kind": "List", "items": [{"kind": "Service"}, ' + nested_json(5000) + "]}", {}),
    ("big.yaml", SVC + "---\n" + SVC, {"RULEGEN_MAX_INPUT_SIZE": "100"}),
])
def test_the_incremental_compile_holds_the_same_limits(tmp_path, monkeypatch, name, text, env):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(UsageError) as full:
        compile_files([str(p)], {}, Report())
    with pytest.raises(UsageError) as inc:
        compile_files_cached([str(p)], {}, Report(), None, str(tmp_path / "c.msgpack"))
    assert str(inc.value) == str(full.value)
    assert str(full.value).startswith(f"{p}: ")


def test_json_in_a_row_reads_like_json_stream_decoding():
    docs = [{"kind": "Service", "n": i, "s": "a\u2028b"} for i in range(5)] + [[1, 2], "x", 3, None, 1.5e300]
    for sep in ("", "\n", " \t\r\n "):
        text = sep.join(json.dumps(d) for d in docs) + sep
        assert loader.read_documents("x.json", text) == docs
        assert loader.read_documents("x.yaml", text) == docs
