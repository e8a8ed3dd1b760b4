"""The loader's fast YAML path builds exactly what PyYAML's safe loader builds."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from rulegen.loader import _iter_yaml, read_documents

ROOT = Path(__file__).resolve().parents[2]
INPUTS = sorted(p for d in ("fixtures", "lint-fixtures", "examples") for p in (ROOT / d).rglob("*.yaml"))


def reference(text: str) -> list:
    return [d for d in yaml.load_all(text, Loader=yaml.CSafeLoader)]


@pytest.mark.parametrize("path", INPUTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_fast_path_equals_pyyaml_on_every_bundled_input(path):
    text = path.read_text()
    assert list(_iter_yaml(text)) == reference(text)


TRICKY = [
    "a: &x {k: [1, 2]}\nb: *x\n",                      # aliases (shared in PyYAML, copied here: equal)
    "base: &b {x: 1}\nderived:\n  <<: *b\n  y: 2\n",   # merge keys fall back to PyYAML
    "when: 2024-01-02T03:04:05Z\nn: ~\nf: 1.5e3\no: 0o17\nh: 0x1F\nb: yes\n",
    "!!set {a, b}\n",
    "- !!binary aGVsbG8=\n- !!str 123\n- '010'\n- 010\n",
    "---\n---\nx: 1\n...\n",
]


@pytest.mark.parametrize("text", TRICKY)
def test_fast_path_equals_pyyaml_on_tricky_yaml(text):
    assert list(_iter_yaml(text)) == reference(text)


scalars = st.one_of(st.text(max_size=12), st.integers(), st.booleans(), st.none(),
                    st.floats(allow_nan=False, allow_infinity=False))
docs = st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=4),
                                                  st.dictionaries(st.text(max_size=6), c, max_size=4)),
                    max_leaves=20)


@settings(max_examples=200, deadline=None)
@given(st.lists(docs, min_size=1, max_size=3))
def test_fast_path_equals_pyyaml_on_generated_documents(values):
    text = yaml.safe_dump_all(values)
    assert list(_iter_yaml(text)) == reference(text)


def test_unhashable_key_error_is_worded_by_pyyaml():
    with pytest.raises(Exception) as ours:
        read_documents("x.yaml", "? [a]\n: 1\n")
    assert "x.yaml" in str(ours.value)
