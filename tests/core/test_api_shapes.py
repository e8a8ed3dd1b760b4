"""Inputs as users have them: raw API lists, JSON documents in a row, kube-proxy's ConfigMap, skipped kinds."""

from __future__ import annotations

import copy
import json

import pytest
import yaml
from click.testing import CliRunner

from rulegen.cli import main
from rulegen.diagnostics import Report
from rulegen.pipeline import compile_files, compile_files_cached
from rulegen.units import ITEM, read_units

SVC = {"apiVersion": "v1", "kind": "Service",
       "metadata": {"name": "shop", "namespace": "retail", "resourceVersion": "812"},
       "spec": {"type": "NodePort", "clusterIP": "10.96.44.7", "externalTrafficPolicy": "Local",
                "ports": [{"name": "web", "port": 80, "targetPort": 8080, "nodePort": 30444, "protocol": "TCP"}]}}
SVC2 = {"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "cart", "namespace": "retail"},
        "spec": {"clusterIP": "10.96.44.8", "ports": [{"name": "api", "port": 9000, "protocol": "TCP"}]}}
SLICE = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": "shop-x1", "namespace": "retail", "labels": {"kubernetes.io/service-name": "shop"}},
         "addressType": "IPv4", "ports": [{"name": "web", "port": 8080, "protocol": "TCP"}],
         "endpoints": [{"addresses": ["10.250.1.4"], "conditions": {"ready": True}, "nodeName": "worker-2"},
                       {"addresses": ["10.250.2.9"], "conditions": {"ready": True}, "nodeName": "worker-7"}]}
NODE = {"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "worker-2"},
        "spec": {"podCIDR": "10.250.1.0/24"},
        "status": {"addresses": [{"type": "InternalIP", "address": "172.20.0.12"}]}}

# What kubeadm keeps in kube-system/kube-proxy (values invented), as `kubectl get cm -o yaml` shows it.
KUBE_PROXY_CM = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: kube-proxy
  namespace: kube-system
  labels: {app: kube-proxy}
data:
  config.conf: |-
    apiVersion: kubeproxy.config.k8s.io/v1alpha1
    bindAddress: 0.0.0.0
    clientConnection:
      kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
    clusterCIDR: 10.250.0.0/16
    configSyncPeriod: 0s
    detectLocalMode: ""
    hostnameOverride: ""
    iptables:
      localhostNodePorts: null
      masqueradeAll: false
      masqueradeBit: 9
      minSyncPeriod: 1s
      syncPeriod: 0s
    ipvs:
      scheduler: ""
      strictARP: false
    kind: KubeProxyConfiguration
    mode: ""
    nftables:
      masqueradeAll: false
      masqueradeBit: null
    nodePortAddresses: null
  kubeconfig.conf: |-
    apiVersion: v1
    kind: Config
"""


def bare(obj: dict) -> dict:
    """OBJ as a typed list's item: without kind and apiVersion, as the API returns it."""
    return {k: v for k, v in copy.deepcopy(obj).items() if k not in ("kind", "apiVersion")}


def typed_list(kind: str, api: str, objs: list[dict]) -> dict:
    return {"kind": kind, "apiVersion": api, "metadata": {"resourceVersion": "9001"},
            "items": [bare(o) for o in objs]}


def kubectl_list(objs: list[dict]) -> dict:
    return {"apiVersion": "v1", "kind": "List", "items": copy.deepcopy(objs), "metadata": {"resourceVersion": ""}}


RAW = [typed_list("ServiceList", "v1", [SVC, SVC2]),
       typed_list("EndpointSliceList", "discovery.k8s.io/v1", [SLICE]),
       typed_list("NodeList", "v1", [NODE])]


def compile_(args: list[str], stdin: str | None = None):
    r = CliRunner().invoke(main, ["compile", *args], input=stdin)
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    return r


@pytest.fixture()
def reference(tmp_path) -> str:
    """The rules of the same objects given with their kinds, as one kubectl List."""
    p = tmp_path / "ref.json"
    p.write_text(json.dumps(kubectl_list([SVC, SVC2, SLICE, NODE])))
    r = compile_([str(p)])
    assert r.exit_code == 0 and r.stderr == ""
    assert "-d 10.96.44.8 --dport 9000" in r.stdout  # both Services; worker-2 is the node, so an SVL chain
    assert '-A KUBE-SVL-IPT7Q4YML7JXXULK -m comment --comment "retail/shop:web -> 10.250.1.4:8080"' in r.stdout
    return r.stdout


# --------------------------------------------------------------------------- raw API lists


def test_raw_lists_in_json_files_take_the_kind_from_the_list(tmp_path, reference):
    paths = []
    for i, doc in enumerate(RAW):
        p = tmp_path / f"{i}.json"
        p.write_text(json.dumps(doc, indent=2))
        paths.append(str(p))
    r = compile_(paths)
    assert (r.exit_code, r.stderr) == (0, "")
    assert r.stdout == reference


def test_raw_lists_in_yaml_files_and_on_stdin(tmp_path, reference):
    text = "---\n".join(yaml.safe_dump(d) for d in RAW)
    p = tmp_path / "raw.yaml"
    p.write_text(text)
    assert compile_([str(p)]).stdout == reference
    assert compile_(["-"], text).stdout == reference


def test_raw_lists_as_json_in_a_row_on_stdin(reference):
    # `curl .../services; curl .../endpointslices; curl .../nodes`: one JSON document after another
    text = "\n".join(json.dumps(d, indent=1) for d in RAW)
    r = compile_(["-"], text)
    assert (r.exit_code, r.stderr) == (0, "")
    assert r.stdout == reference
    assert compile_(["-"], "".join(json.dumps(d) for d in RAW)).stdout == reference


def test_raw_list_items_get_the_lists_api_version_and_keep_their_own_kind(tmp_path):
    from rulegen.loader import iter_objects

    doc = typed_list("ServiceList", "v1", [SVC])
    doc["items"].append({"kind": "ConfigMap", "metadata": {"name": "odd"}})
    doc["items"].append({"kind": "", "metadata": {"name": "blank-kind"}})
    for name, text in [("l.json", json.dumps(doc)), ("l.yaml", yaml.safe_dump(doc))]:
        p = tmp_path / name
        p.write_text(text)
        objs = [o for _, o in iter_objects([str(p)])]
        assert [(o["kind"], o.get("apiVersion")) for o in objs] == [
            ("Service", "v1"), ("ConfigMap", None), ("Service", "v1")]


def test_raw_list_problems_name_the_item_and_its_kind(tmp_path):
    bad = copy.deepcopy(SVC)
    bad["spec"]["ports"][0]["nodePort"] = 99999
    p = tmp_path / "svc.json"
    p.write_text(json.dumps(typed_list("ServiceList", "v1", [SVC2, bad])))
    r = compile_([str(p)])
    assert r.exit_code == 0
    assert (f"{p}: document 1 item 2 (Service retail/shop): spec.ports[0].nodePort: 99999 is not a valid port "
            "(node port left out)") in r.stderr


def test_raw_lists_through_the_incremental_compile(tmp_path):
    paths = []
    for i, doc in enumerate(RAW):
        p = tmp_path / f"{i}.json"
        p.write_text(json.dumps(doc))
        paths.append(str(p))
    stdin_like = tmp_path / "row.json"  # the same, as documents in a row in one file
    stdin_like.write_text("\n".join(json.dumps(d) for d in RAW))
    for files in (paths, [str(stdin_like)]):
        full = compile_files(files, {}, Report())
        cache = str(tmp_path / f"c{len(files)}.msgpack")
        for _ in range(2):  # cold, then warm from the cache
            inc = compile_files_cached(files, {}, Report(), None, cache)
            assert inc.ir == full.ir
            inc.save_cache(cache)
        assert inc.stats["compiled"] == 0
    assert "retail/shop:web" in full.text


def test_the_same_item_bytes_in_different_typed_lists_are_different_units(tmp_path):
    item = {"metadata": {"name": "same", "namespace": "x"}}
    for kind in ("ServiceList", "EndpointSliceList", "List"):
        (tmp_path / f"{kind}.json").write_text(json.dumps({"kind": kind, "items": [item]}))
    units = read_units([str(tmp_path / f"{k}.json") for k in ("ServiceList", "EndpointSliceList", "List")])
    assert [u.how for u in units] == [ITEM] * 3
    assert len({u.digest for u in units}) == 3
    assert [u.decode(0)[0][0][1].get("kind") for u in units] == ["Service", "EndpointSlice", None]


# --------------------------------------------------------------------------- JSON documents in a row


def test_json_documents_in_a_row_in_a_file_number_their_documents(tmp_path):
    bad = copy.deepcopy(SVC2)
    bad["spec"]["clusterIP"] = "10.96.44.300"
    p = tmp_path / "row.json"
    p.write_text(json.dumps(kubectl_list([SVC])) + "\n" + json.dumps(bad) + "\n")
    r = compile_([str(p)])
    assert r.exit_code == 0
    assert f"{p}: document 2 (Service retail/cart): spec.clusterIP: '10.96.44.300' is not a valid IP address" in r.stderr
    assert "retail/shop:web" in r.stdout


def test_json_in_a_row_with_garbage_is_exit_2_with_the_position_in_the_whole_file(tmp_path):
    p = tmp_path / "row.json"
    p.write_text(json.dumps(SVC) + "\n" + json.dumps(SVC2) + "\nnot json\n")
    r = compile_([str(p)])
    assert r.exit_code == 2
    assert r.stderr.startswith(f"rulegen: error: {p}: not valid JSON: Expecting value: line 3 column 1")


# --------------------------------------------------------------------------- kube-proxy's ConfigMap


def test_kube_proxy_configmap_is_the_kube_proxy_configuration(tmp_path):
    p = tmp_path / "all.yaml"
    p.write_text(KUBE_PROXY_CM + "---\n" + yaml.safe_dump_all([SVC, SLICE, NODE]))
    r = compile_([str(p), "--strict"])
    assert (r.exit_code, r.stderr) == (0, ""), r.output
    assert "! -s 10.250.0.0/16 -j KUBE-MARK-MASQ" in r.stdout  # its clusterCIDR
    assert "--or-mark 0x00000200" in r.stdout  # its iptables.masqueradeBit: 9


def test_kube_proxy_configmap_as_config_file_and_in_a_raw_configmap_list(tmp_path):
    cm = tmp_path / "cm.yaml"
    cm.write_text(KUBE_PROXY_CM)
    objs = tmp_path / "objs.yaml"
    objs.write_text(yaml.safe_dump_all([SVC, SLICE, NODE]))
    r = compile_([str(objs), "--config", str(cm)])
    assert r.exit_code == 0 and "--or-mark 0x00000200" in r.stdout
    cms = typed_list("ConfigMapList", "v1", [yaml.safe_load(KUBE_PROXY_CM),
                                             {"kind": "ConfigMap", "metadata": {"name": "other", "namespace": "x"}}])
    lst = tmp_path / "cms.json"
    lst.write_text(json.dumps(cms))
    r = compile_([str(objs), str(lst)])
    assert r.exit_code == 0 and "--or-mark 0x00000200" in r.stdout
    assert r.stderr == "rulegen: skipped 1 object of kinds rulegen does not use: ConfigMap (1)\n"


def test_other_configmaps_are_skipped_even_when_named_kube_proxy(tmp_path):
    elsewhere = KUBE_PROXY_CM.replace("namespace: kube-system", "namespace: default")
    r = compile_(["-"], elsewhere + "---\n" + yaml.safe_dump(SVC2))
    assert r.exit_code == 0
    assert "KUBE-MARK-MASQ" in r.stdout and "0x00000200" not in r.stdout
    assert r.stderr == "rulegen: skipped 1 object of kinds rulegen does not use: ConfigMap (1)\n"


def test_kube_proxy_configmap_problems_name_the_key_and_field():
    text = KUBE_PROXY_CM.replace("masqueradeBit: 9", "masqueradeBit: 40").replace(
        "clusterCIDR: 10.250.0.0/16", "clusterCIDR: 10.250.0.0/16,nope")
    r = compile_(["-"], text + "---\n" + yaml.safe_dump(SVC2))
    assert r.exit_code == 0
    place = "<stdin>: document 1 (ConfigMap kube-system/kube-proxy): data[config.conf]"
    assert f"{place}.iptables.masqueradeBit: 40 is not between 0 and 31 (default 14 used)" in r.stderr
    assert f"{place}.clusterCIDR: 'nope' is not a valid CIDR (left out)" in r.stderr


@pytest.mark.parametrize("config_conf,code,message", [
    ("    kind: [unclosed", 2, "data[config.conf]: not valid YAML (line 2, column 1)"),
    ("    kind: KubeletConfiguration", 0, "data[config.conf].kind: 'KubeletConfiguration' is not KubeProxyConfiguration"),
    ("    - a list", 0, "data[config.conf]: expected one KubeProxyConfiguration document"),
])
def test_kube_proxy_configmap_with_unusable_config(config_conf, code, message):
    text = KUBE_PROXY_CM.split("  config.conf: |-\n")[0] + "  config.conf: |-\n" + config_conf + "\n"
    r = compile_(["-"], text + "---\n" + yaml.safe_dump(SVC2))
    assert r.exit_code == code
    assert f"<stdin>: document 1 (ConfigMap kube-system/kube-proxy): {message}" in r.stderr


def test_kube_proxy_configmap_without_config_conf_is_left_out():
    text = KUBE_PROXY_CM.split("  config.conf: |-\n")[0] + "  other: x\n"
    r = compile_(["-"], text + "---\n" + yaml.safe_dump(SVC2))
    assert r.exit_code == 0
    assert "(ConfigMap kube-system/kube-proxy): data[config.conf]: missing (object left out)" in r.stderr


# --------------------------------------------------------------------------- skipped kinds


def test_skipped_kinds_are_one_line_in_every_input_shape(tmp_path):
    deploy = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "d", "namespace": "x"}}
    p = tmp_path / "mix.json"
    p.write_text(json.dumps(kubectl_list([SVC2, deploy, deploy])) + "\n"
                 + json.dumps(typed_list("JobList", "batch/v1", [deploy] * 3)) + "\n"
                 + json.dumps({"kind": "Secret", "metadata": {"name": "s"}}))
    y = tmp_path / "mix.yaml"
    y.write_text("kind: Secret\nmetadata: {name: t}\n---\nkind: Secret\nmetadata: {name: u}\n")
    r = compile_([str(p), str(y)])
    assert r.exit_code == 0
    assert r.stderr == "rulegen: skipped 8 objects of kinds rulegen does not use: Job (5), Secret (3)\n"


def test_the_skipped_summary_is_bounded_and_quotes_odd_kinds():
    docs = [{"kind": f"Kind{i:02}", "metadata": {"name": "a"}} for i in range(15)]
    docs.append({"kind": "Bad\nKind" + "x" * 100, "metadata": {"name": "b"}})
    r = compile_(["-"], "\n".join(json.dumps(d) for d in docs + [SVC2]))
    assert r.exit_code == 0
    (line,) = r.stderr.splitlines()
    assert line.startswith("rulegen: skipped 16 objects of kinds rulegen does not use: 'Bad\\nKindxxx")
    assert line.endswith("Kind10 (1) and 4 more kinds")


def test_golden_notes_carry_the_summary(tmp_path):
    case = tmp_path / "cases" / "mixed"
    case.mkdir(parents=True)
    (case / "input.yaml").write_text(yaml.safe_dump_all([SVC2, {"kind": "Secret", "metadata": {"name": "s"}}]))
    r = CliRunner().invoke(main, ["golden", str(tmp_path / "cases"), "--update"])
    assert r.exit_code == 0, r.output
    assert "    note: skipped 1 object of kinds rulegen does not use: Secret (1)" in r.stdout.splitlines()


def test_null_node_address_is_called_null(tmp_path):
    node = copy.deepcopy(NODE)
    node["status"]["addresses"] = [{"type": "InternalIP", "address": None}, {"type": "InternalIP"},
                                   {"type": "InternalIP", "address": "172.20.0.12"}]
    r = compile_(["-"], json.dumps(kubectl_list([SVC2, node])))
    assert r.exit_code == 0
    place = "<stdin>: document 1 item 2 (Node worker-2)"
    assert f"{place}: status.addresses[0].address: null (left out)" in r.stderr
    assert f"{place}: status.addresses[1].address: missing (left out)" in r.stderr
    assert "None" not in r.stderr


def test_null_endpoint_address_is_called_null():
    sl = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
          "metadata": {"name": "web-x", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
          "addressType": "IPv4", "ports": [{"port": 80}], "endpoints": [{"addresses": [None]}]}
    r = compile_(["-"], json.dumps(kubectl_list([SVC2, sl])))
    assert r.exit_code == 0
    assert "(EndpointSlice default/web-x): endpoints[0].addresses[0]: null (endpoint left out)" in r.stderr
    assert "None" not in r.stderr
