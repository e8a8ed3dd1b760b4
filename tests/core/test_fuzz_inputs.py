"""Mutated Services and EndpointSlices: never a traceback, exit 0 or 2 only, and every payload loads.

Each example takes a valid cluster (a NodePort Service with two named ports,
its EndpointSlice, a Node, a kube-proxy configuration) and replaces one to
three of its fields with something odd: strings with newlines, quotes, `#`,
blanks, control and other non-ASCII characters, very long strings, numbers
where strings go and the reverse, nulls, lists and nested mappings; or
deletes the field. The result goes through `rulegen compile` in-process as
YAML or as a `kubectl get -o json` List, with and without `--strict`. As
root, every payload that came out with exit 0 is then given to
`iptables-restore --test` in one fresh network namespace.

Half the mutations aim at names (where an object is named, and every text
that reaches the payload); the rest at any field. The examples are derandomized (the same ones on every run, no example
database) and bounded, so the test takes a few seconds.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import subprocess
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from rulegen.cli import main

from nshelp import namespace_names

SERVICE = {
    "apiVersion": "v1", "kind": "Service",
    "metadata": {"name": "shop-web", "namespace": "shop", "labels": {"app": "shop-web"}},
    "spec": {
        "type": "NodePort", "clusterIP": "10.96.7.20", "clusterIPs": ["10.96.7.20"], "ipFamilies": ["IPv4"],
        "selector": {"app": "shop-web"}, "externalIPs": ["203.0.113.40"],
        "externalTrafficPolicy": "Local", "internalTrafficPolicy": "Cluster",
        "sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}},
        "ports": [
            {"name": "http", "protocol": "TCP", "port": 80, "targetPort": "web", "nodePort": 31080},
            {"name": "stats", "protocol": "UDP", "port": 9125, "targetPort": 9125, "nodePort": 31125},
        ],
    },
    "status": {"loadBalancer": {}},
}
SLICE = {
    "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
    "metadata": {"name": "shop-web-7fq2d", "namespace": "shop",
                 "labels": {"kubernetes.io/service-name": "shop-web",
                            "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
    "addressType": "IPv4",
    "ports": [{"name": "http", "protocol": "TCP", "port": 8080}, {"name": "stats", "protocol": "UDP", "port": 9125}],
    "endpoints": [
        {"addresses": ["10.244.4.10"], "conditions": {"ready": True, "serving": True, "terminating": False},
         "nodeName": "worker-1", "zone": "zone-a", "hints": {"forZones": [{"name": "zone-a"}]}},
        {"addresses": ["10.244.5.11"], "conditions": {"ready": False, "serving": True, "terminating": True},
         "nodeName": "worker-2", "zone": "zone-b"},
    ],
}
NODE = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "worker-1", "labels": {"topology.kubernetes.io/zone": "zone-a"}},
        "spec": {"podCIDR": "10.244.4.0/24"}, "status": {"addresses": [{"type": "InternalIP", "address": "172.16.9.4"}]}}
CONFIG = {"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
          "clusterCIDR": "10.244.0.0/16", "detectLocalMode": "BridgeInterface", "detectLocal": {"bridgeInterface": "cbr0"}}
DOCS = [SERVICE, SLICE, NODE, CONFIG]


def _paths(node: Any, at: tuple = ()) -> list[tuple]:
    """Every place in NODE a mutation can hit: each mapping key and list index, nested."""
    out = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        out.append(at + (k,))
        out.extend(_paths(v, at + (k,)))
    return out


# The Service and the EndpointSlice are the targets; the config's detectLocal names reach the payload too.
PATHS = [(0,) + p for p in _paths(SERVICE)] + [(1,) + p for p in _paths(SLICE)] + \
        [(3,) + p for p in _paths(CONFIG) if p[0] in ("detectLocal", "detectLocalMode")]

ODD_STRINGS = [
    "", " ", "shop-web\n-A INPUT -j ACCEPT", "shop-web\n", 'http" -j DROP', "it's", "back\\slash", "#x", "a b",
    "Shop-Web", "shop_web", "shop.web", "-x", "x-", "ünïcødé", "日本", "\u2028", "\x00", "\x1b[31m", "\r\n",
    "x" * 64, "y" * 300, "z" * 5000, "10.244.4.10", "::1", "None", "TCP", "LoadBalancer", "Local", "cbr0 -j ACCEPT",
    "veth+", "http", "stats", "worker-1",
]
SCALARS = st.one_of(
    st.sampled_from(ODD_STRINGS),
    st.text(max_size=24),
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
    st.sampled_from([0, -1, 65535, 65536, 30000, 86401, 1.5, float("inf")]),
)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.sampled_from(["name", "port", "ip", "x", ""]), inner, max_size=3), max_leaves=6)
ANY_MUTATION = st.tuples(st.sampled_from(PATHS), st.one_of(VALUES, st.just(KeyError)))

# Half the mutations aim at the text that reaches the payload or names an object:
# names, namespaces, port names, labels (values and keys), nodeNames, interfaces.
NAME_PATHS = [
    (0, "metadata", "name"), (0, "metadata", "namespace"), (0, "metadata", "labels", "app"),
    (0, "spec", "selector", "app"), (0, "spec", "ports", 0, "name"), (0, "spec", "ports", 1, "name"),
    (0, "spec", "ports", 0, "targetPort"), (1, "metadata", "name"), (1, "metadata", "namespace"),
    (1, "metadata", "labels", "kubernetes.io/service-name"), (1, "ports", 0, "name"), (1, "ports", 1, "name"),
    (1, "endpoints", 0, "nodeName"), (1, "endpoints", 1, "nodeName"), (1, "endpoints", 0, "zone"),
    (1, "endpoints", 0, "hints", "forZones", 0, "name"), (3, "detectLocal", "bridgeInterface"),
]
HOSTILE = st.one_of(
    # Valid names too, up to the longest the API server allows: they reach the payload's comments.
    st.from_regex(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", fullmatch=True),
    st.sampled_from(["n" * 63, "a" + "-" * 61 + "z", "0", "9-x"]),
    st.sampled_from(ODD_STRINGS),
    st.text(max_size=40),
    st.text(alphabet=st.sampled_from("ab09-_.:/ \"'\\#\n\t\r\x00é\u2028"), min_size=1, max_size=16),
)
NAME_MUTATION = st.one_of(
    st.tuples(st.sampled_from(NAME_PATHS), HOSTILE),
    st.builds(lambda where, key: (where + (key,), "x"),
              st.sampled_from([(0, "metadata", "labels"), (0, "spec", "selector"), (1, "metadata", "labels")]), HOSTILE),
)
MUTATION = st.one_of(NAME_MUTATION, ANY_MUTATION)


def mutate(docs: list[dict], mutations: list[tuple[tuple, Any]]) -> list[dict]:
    docs = copy.deepcopy(docs)
    for path, value in mutations:
        parent: Any = docs[path[0]]
        for step in path[1:-1]:
            try:
                parent = parent[step]
            except (KeyError, IndexError, TypeError):
                parent = None
                break
        if not isinstance(parent, (dict, list)):
            continue  # an earlier mutation replaced what this one aimed into
        key = path[-1]
        if isinstance(parent, list) and not (isinstance(key, int) and key < len(parent)):
            continue
        if isinstance(parent, dict) and not isinstance(key, str):
            continue
        if value is KeyError:
            if isinstance(parent, dict):
                parent.pop(key, None)
            else:
                del parent[key]
        else:
            parent[key] = value
    return docs


def render(docs: list[dict], as_json: bool) -> str:
    if as_json:
        return json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}, ensure_ascii=False)
    return yaml.safe_dump_all(docs, allow_unicode=True)


EXAMPLES = 300


def fuzz(examples: int) -> dict[str, str]:
    """Run the examples; return every distinct exit-0 payload (by digest)."""
    payloads: dict[str, str] = {}
    counts = {0: 0, 2: 0}

    @hsettings(max_examples=examples, deadline=None, derandomize=True, database=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.lists(MUTATION, min_size=1, max_size=3), st.booleans(), st.sampled_from([False, False, True]))
    def one(mutations, as_json, strict):
        text = render(mutate(DOCS, mutations), as_json)
        args = ["compile", "-", "--no-nfacct", *(["--strict"] if strict else [])]
        r = CliRunner().invoke(main, args, input=text)
        assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
        assert "Traceback" not in r.output and "internal error" not in r.output, r.output
        assert r.exit_code in (0, 2), (r.exit_code, r.output)
        counts[r.exit_code] += 1
        if r.exit_code == 0:
            for line in r.stderr.splitlines():  # every problem one line with its place
                assert line.startswith(("<stdin>: document ", "rulegen: ")), line
            assert r.stdout.startswith("*filter\n") and r.stdout.endswith("COMMIT\n")
            payloads.setdefault(hashlib.sha256(r.stdout.encode()).hexdigest(), r.stdout)

    one()
    assert counts[0] and counts[2], counts  # the examples reach both outcomes
    return payloads


def test_mutated_inputs_exit_0_or_2_without_traceback():
    payloads = fuzz(EXAMPLES)
    assert len(payloads) > 1  # mutations change the rules, not only refuse the input


@pytest.mark.root
def test_every_exit_0_payload_loads(tmp_path):
    if not shutil.which("iptables-restore"):
        pytest.skip("iptables-restore not installed")
    payloads = fuzz(EXAMPLES)
    files = []
    for i, text in enumerate(payloads.values()):
        f = tmp_path / f"p{i}.rules"
        f.write_text(text)
        files.append(str(f))
    # One shell for all of them: a name per refused file, so the assertion says which.
    script = 'for f in "$@"; do out=$(iptables-restore --test < "$f" 2>&1) || echo "$f: refused: $out"; done'
    with namespace_names("rgt-fuzz") as fresh:
        ns = fresh()
        subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
        r = subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", script, "sh", *files],
                           capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", (r.stdout + r.stderr)[:4000]
