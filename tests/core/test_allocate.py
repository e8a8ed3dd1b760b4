"""`--allocate`: manifests not yet applied, completed as the API server and the controllers would.

The inputs are written in the shapes Helm and kustomize print (multi-document
YAML with comments, `---` and `...`, Deployments with named ports, DaemonSets,
StatefulSets with headless Services, Services without a selector and
ExternalName). Checked: what is allocated (cluster IPs, node ports, pods,
EndpointSlices) and what it compiles to; the edge cases of the allocators
(exhaustion, taken addresses and ports, the reserved first address, the
default range, a given range, dual stack); the notice without the flag;
determinism, in-process and across PYTHONHASHSEED values; the incremental
compile's fallback; and that the input is never changed.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner
from msgspec import structs

from rulegen import allocate
from rulegen.allocate import Options
from rulegen.cli import main
from rulegen.flags import SETTING_KEYS
from rulegen.diagnostics import Report
from rulegen.loader import load
from rulegen.pipeline import compile_files, compile_files_cached

ROOT = Path(__file__).resolve().parents[2]
HELM = ROOT / "examples" / "helm-rendered"
RULEGEN = [sys.executable, "-c", "import sys; from rulegen.cli import main; sys.exit(main())"]


def flags(**kw) -> dict:
    f = {k: None for k in SETTING_KEYS}
    f.update(kw)
    return f


def write(tmp_path: Path, text: str, name: str = "in.yaml") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def allocated(path: str, **kw):
    """(inputs after allocation, report) for one file, through the pipeline."""
    report = Report()
    c = compile_files([path], flags(allocate=True, **kw), report)
    return c, report


def svc_by_name(c, name: str, ns: str = "default"):
    return next(s for s in c.inputs.services if s.name == name and s.namespace == ns)


def slices_of(c, name: str, ns: str = "default"):
    return [sl for sl in c.inputs.slices if sl.service_name == name and sl.namespace == ns]


def endpoints_of(c, name: str, ns: str = "default") -> list[str]:
    return sorted(e.ip for sl in slices_of(c, name, ns) for e in sl.endpoints)


def run(*args: str, stdin: str | None = None):
    return CliRunner().invoke(main, list(args), input=stdin)


def service(name: str, *, ns: str = "default", type_: str = "ClusterIP", selector: str = "{app: web}",
            ports: str = "[{name: http, port: 80, targetPort: http}]", extra: str = "") -> str:
    return f"""\
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {ns}}}
spec:
  type: {type_}
  selector: {selector}
  ports: {ports}
{extra}"""


def deployment(name: str, *, ns: str = "default", replicas: str = "2", labels: str = "{app: web}",
               ports: str = "[{name: http, containerPort: 8080}]", spec_extra: str = "",
               kind: str = "Deployment") -> str:
    reps = f"  replicas: {replicas}\n" if replicas != "" else ""
    return f"""\
apiVersion: apps/v1
kind: {kind}
metadata: {{name: {name}, namespace: {ns}}}
spec:
{reps}  selector:
    matchLabels: {labels}
  template:
    metadata:
      labels: {labels}
    spec:
{spec_extra}      containers:
      - name: main
        image: registry.example.com/app:1
        ports: {ports}
"""


def docs(*parts: str) -> str:
    return "---\n".join(parts)


# --------------------------------------------------------------------------- the Helm-shaped example


def test_helm_chart_compiles_to_rules_for_every_service_it_renders():
    c, report = allocated(str(HELM))
    # Cluster IPs for the four proxied Services, from kubeadm's default range, above the static band.
    static_end = ipaddress.ip_address("10.96.1.0")
    for name in ("demo-shop-frontend", "demo-shop-cache", "demo-shop-agent", "demo-shop-db"):
        s = svc_by_name(c, name)
        ip = ipaddress.ip_address(s.cluster_ip)
        assert ip in ipaddress.ip_network("10.96.0.0/12") and ip > static_end, (name, ip)
        assert s.cluster_ips == (s.cluster_ip,) and s.ip_families == ("IPv4",)
    assert len({svc_by_name(c, n).cluster_ip for n in ("demo-shop-frontend", "demo-shop-cache",
                                                       "demo-shop-agent", "demo-shop-db")}) == 4
    # Headless stays headless, ExternalName gets nothing.
    assert svc_by_name(c, "demo-shop-cache-headless").headless and not svc_by_name(c, "demo-shop-cache-headless").cluster_ip
    assert not svc_by_name(c, "demo-shop-payments").cluster_ip
    # The NodePort got a node port from the dynamic part of the range.
    (np_,) = [p.node_port for p in svc_by_name(c, "demo-shop-frontend").ports]
    assert 30086 <= np_ <= 32767
    # Three frontend replicas behind the named targetPort (http -> 8080), on node-1's pod range.
    (sl,) = slices_of(c, "demo-shop-frontend")
    assert [(p.name, p.protocol, p.port) for p in sl.ports] == [("http", "TCP", 8080)]
    assert len(sl.endpoints) == 3 and all(e.ready and e.node_name == "node-1" for e in sl.endpoints)
    assert all(ipaddress.ip_address(e.ip) in ipaddress.ip_network("10.244.0.0/24") for e in sl.endpoints)
    # Two StatefulSet pods behind both cache Services; one DaemonSet pod (one node).
    assert endpoints_of(c, "demo-shop-cache") == endpoints_of(c, "demo-shop-cache-headless")
    assert len(endpoints_of(c, "demo-shop-cache")) == 2
    assert len(endpoints_of(c, "demo-shop-agent")) == 1
    # The selector-less Service keeps the slice the chart ships; no other is made for it.
    assert [sl.name for sl in slices_of(c, "demo-shop-db")] == ["demo-shop-db-1"]
    # Every pod address is distinct, and none is the network or the bridge's (.0, .1).
    ips = [e.ip for sl in c.inputs.slices for e in sl.endpoints if e.ip.startswith("10.244.")]
    assert len(set(ips)) == 6 and not {"10.244.0.0", "10.244.0.1"} & set(ips)
    # The synthesized node, labelled as the contract says, is the node of the rules.
    (node,) = c.inputs.nodes
    assert node.name == "node-1" and node.labels["kubernetes.io/os"] == "linux"
    assert c.settings.hostname == "node-1"
    assert report.notes[-1].startswith("--allocate: 4 cluster IPs from 10.96.0.0/12; 1 node port; ")
    text = c.text
    for name in ("demo-shop-frontend:http", "demo-shop-cache:redis", "demo-shop-agent:metrics", "demo-shop-db:postgres"):
        assert f'"default/{name} cluster IP"' in text
    assert "KUBE-SVL-" in text  # the agent's internalTrafficPolicy Local, with its endpoint on this node
    assert "payments" not in text and "cache-headless" not in text


def test_without_the_flag_nothing_is_made_and_one_notice_says_why():
    r = run("compile", str(HELM))
    assert r.exit_code == 0
    assert "cluster IP" not in r.stdout
    notes = [ln for ln in r.stderr.splitlines() if "clusterIP" in ln]
    assert notes == ["rulegen: 4 Services of 6 have no clusterIP (manifests not yet applied?): kube-proxy writes "
                     "no rules for them; --allocate compiles them as the API server and controllers would "
                     "(cluster IPs, node ports, EndpointSlices from the workloads)"]
    assert "--allocate:" not in r.stderr
    # An applied input draws no such notice.
    r = run("compile", str(ROOT / "examples" / "web-frontend"))
    assert r.exit_code == 0 and "--allocate" not in r.stderr


def test_services_with_addresses_but_workloads_instead_of_slices_draw_the_other_notice(tmp_path):
    path = write(tmp_path, docs(service("web", extra="  clusterIP: 10.96.5.5\n"), deployment("web")))
    r = run("compile", path)
    assert r.exit_code == 0
    assert r.stderr.splitlines() == [
        "rulegen: 1 Service with a selector and no EndpointSlice in the input: kube-proxy rejects their "
        "connections; --allocate makes the EndpointSlices the controller would, from the workloads and Pods "
        "of the input"]
    r = run("compile", path, "--allocate")
    assert "10.244.0.2:8080" in r.stdout and "10.96.5.5" in r.stdout


def test_stdin_helm_template_pipe():
    text = (HELM / "shop.yaml").read_text()
    r = run("compile", "--allocate", "-", stdin=text)
    assert r.exit_code == 0, r.output
    assert r.stdout == run("compile", "--allocate", str(HELM)).stdout


def test_the_input_is_not_changed():
    report = Report()
    inputs = load([str(HELM)], report)
    before = structs.asdict(inputs)
    snapshot = json.dumps(before, default=str, sort_keys=True)
    out = allocate.allocate(inputs, Options(), Report())
    assert json.dumps(structs.asdict(inputs), default=str, sort_keys=True) == snapshot
    assert out is not inputs and len(out.slices) > len(inputs.slices)


# --------------------------------------------------------------------------- determinism


def test_the_same_input_gives_the_same_bytes_twice():
    a = run("compile", "--allocate", str(HELM))
    b = run("compile", "--allocate", str(HELM))
    assert a.exit_code == 0 and a.stdout == b.stdout and a.stderr == b.stderr


def test_the_same_bytes_across_python_hash_seeds(tmp_path):
    kustomize = ROOT / "fixtures" / "allocate-kustomize"
    outs = set()
    for seed in ("0", "1", "4242", "random"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        got = []
        for args in (["compile", "--allocate", str(HELM)],
                     ["compile", "--allocate", "--hostname", "wrk-3", str(kustomize)],
                     ["lint", "--allocate", "--json", str(HELM)]):
            cp = subprocess.run([*RULEGEN, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
            assert cp.returncode in (0, 1), cp.stderr
            got.append(cp.stdout + cp.stderr)
        outs.add(tuple(got))
    assert len(outs) == 1


def test_a_service_keeps_its_address_when_others_are_added(tmp_path):
    one = write(tmp_path, docs(service("web"), deployment("web")), "one.yaml")
    c1, _ = allocated(one)
    more = [service(f"other-{i}", selector=f"{{app: o{i}}}") for i in range(30)]
    many = write(tmp_path, docs(*more, service("web"), deployment("web")), "many.yaml")
    c2, _ = allocated(many)
    assert svc_by_name(c1, "web").cluster_ip == svc_by_name(c2, "web").cluster_ip


def test_file_order_does_not_change_the_result(tmp_path):
    parts = [service("a", selector="{app: a}"), service("b", selector="{app: b}"),
             deployment("a", labels="{app: a}"), deployment("b", labels="{app: b}")]
    c1, _ = allocated(write(tmp_path, docs(*parts), "x.yaml"))
    c2, _ = allocated(write(tmp_path, docs(*reversed(parts)), "y.yaml"))
    assert c1.text == c2.text


# --------------------------------------------------------------------------- the cluster IP allocator


def test_the_default_range_is_kubeadms_and_becomes_a_service_cidr(tmp_path):
    c, _ = allocated(write(tmp_path, service("web")))
    assert ipaddress.ip_address(svc_by_name(c, "web").cluster_ip) in ipaddress.ip_network("10.96.0.0/12")
    assert [(s.name, s.cidrs) for s in c.inputs.service_cidrs] == [("kubernetes", ("10.96.0.0/12",))]


def test_a_given_service_cidr_flag_or_object(tmp_path):
    c, _ = allocated(write(tmp_path, service("web")), service_cidr=["172.30.0.0/16"])
    assert svc_by_name(c, "web").cluster_ip.startswith("172.30.")
    assert c.inputs.service_cidrs == []  # the flag is the range; no object is made up
    obj = """\
apiVersion: networking.k8s.io/v1
kind: ServiceCIDR
metadata: {name: primary}
spec: {cidrs: [192.168.128.0/20]}
"""
    c, _ = allocated(write(tmp_path, docs(obj, service("web")), "o.yaml"))
    assert ipaddress.ip_address(svc_by_name(c, "web").cluster_ip) in ipaddress.ip_network("192.168.128.0/20")


def test_a_taken_address_is_skipped(tmp_path):
    alone, _ = allocated(write(tmp_path, service("web"), "a.yaml"))
    ip = svc_by_name(alone, "web").cluster_ip
    # Another Service already holds the address web's hash points at: web gets the next one.
    holder = service("holder", selector="{app: h}", extra=f"  clusterIP: {ip}\n")
    c, _ = allocated(write(tmp_path, docs(holder, service("web")), "b.yaml"))
    assert svc_by_name(c, "holder").cluster_ip == ip
    assert svc_by_name(c, "web").cluster_ip == str(ipaddress.ip_address(ip) + 1)


def test_a_small_range_fills_up_without_the_reserved_addresses_then_refuses(tmp_path):
    # 10.0.0.0/29: .0 is the network, .7 the broadcast, .1 the kubernetes Service's: five for the others.
    svcs = [service(f"s{i}", selector=f"{{app: s{i}}}") for i in range(6)]
    path = write(tmp_path, docs(*svcs))
    c, report = allocated(path, service_cidr=["10.0.0.0/29"])
    got = sorted(s.cluster_ip for s in c.inputs.services)
    assert got == ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
    (p,) = [p for p in report.problems if "no free address" in p.message]
    assert str(p) == (f"{path}: document 6 (Service default/s5): spec.clusterIP: no free address left in the "
                      "service range 10.0.0.0/29 (the API server refuses the Service: left out)")
    assert not p.notice
    r = run("compile", "--allocate", "--service-cidr", "10.0.0.0/29", path)
    assert r.exit_code == 0 and "no free address left" in r.stderr and "Traceback" not in r.output
    r = run("compile", "--allocate", "--service-cidr", "10.0.0.0/29", "--strict", path)
    assert r.exit_code == 2


def test_the_kubernetes_service_gets_the_first_address(tmp_path):
    k8s = """\
apiVersion: v1
kind: Service
metadata: {name: kubernetes, namespace: default}
spec:
  ports: [{name: https, port: 443, targetPort: 6443}]
"""
    c, _ = allocated(write(tmp_path, docs(k8s, service("web"))))
    assert svc_by_name(c, "kubernetes").cluster_ip == "10.96.0.1"
    assert svc_by_name(c, "web").cluster_ip != "10.96.0.1"


def test_dual_stack_follows_ip_family_policy(tmp_path):
    path = write(tmp_path, docs(
        service("single", selector="{app: web}"),
        service("prefer", selector="{app: web}", extra="  ipFamilyPolicy: PreferDualStack\n"),
        service("six", selector="{app: web}", extra="  ipFamilies: [IPv6]\n"),
        deployment("web")))
    c, report = allocated(path, service_cidr=["10.96.0.0/16", "fd00:96::/108"],
                          cluster_cidr=["10.244.0.0/16", "fd00:10:244::/56"])
    assert svc_by_name(c, "single").ip_families == ("IPv4",)
    prefer = svc_by_name(c, "prefer")
    assert prefer.ip_families == ("IPv4", "IPv6") and ":" in prefer.cluster_ips[1]
    assert ipaddress.ip_address(prefer.cluster_ips[1]) in ipaddress.ip_network("fd00:96::/108")
    assert svc_by_name(c, "six").cluster_ip.startswith("fd00:96::")
    # Slices per family; the pods have an address of each family (the node's two pod ranges).
    assert sorted(sl.address_type for sl in slices_of(c, "prefer")) == ["IPv4", "IPv6"]
    assert [sl.address_type for sl in slices_of(c, "six")] == ["IPv6"]
    v6 = [e.ip for sl in slices_of(c, "six") for e in sl.endpoints]
    assert len(v6) == 2 and all(ipaddress.ip_address(ip) in ipaddress.ip_network("fd00:10:244::/64") for ip in v6)
    # RequireDualStack where the service CIDRs are of one family: the API server refuses it.
    bad = write(tmp_path, service("both", extra="  ipFamilyPolicy: RequireDualStack\n"), "bad.yaml")
    c, report = allocated(bad)
    assert not c.inputs.services
    assert "spec.ipFamilyPolicy: RequireDualStack, but the service CIDRs are of one family only (IPv4) " \
           "(the API server refuses the Service: left out)" in report.lines()[0]


def test_services_with_an_address_are_left_alone(tmp_path):
    path = write(tmp_path, docs(service("web", extra="  clusterIP: 10.96.7.7\n"), deployment("web")))
    c, _ = allocated(path)
    s = svc_by_name(c, "web")
    assert s.cluster_ip == "10.96.7.7" and s.cluster_ips == () and s.ip_families == ()


# --------------------------------------------------------------------------- the node port allocator


def test_node_ports_nodeport_and_loadbalancer(tmp_path):
    path = write(tmp_path, docs(
        service("dns", type_="NodePort", selector="{app: dns}",
                ports="[{name: dns, port: 53, protocol: UDP}, {name: dns-tcp, port: 53, protocol: TCP}, "
                      "{name: metrics, port: 9153}]"),
        service("lb", type_="LoadBalancer", extra="  externalTrafficPolicy: Local\n"),
        service("lb-no-np", type_="LoadBalancer", extra="  allocateLoadBalancerNodePorts: false\n"),
        service("lb-pinned", type_="LoadBalancer", extra="  allocateLoadBalancerNodePorts: false\n",
                ports="[{name: http, port: 80, nodePort: 30999}, {name: https, port: 443}]")))
    c, _ = allocated(path)
    dns = {p.name: p.node_port for p in svc_by_name(c, "dns").ports}
    assert dns["dns"] == dns["dns-tcp"] != dns["metrics"]  # one node port for TCP and UDP 53
    assert all(30000 <= v <= 32767 for v in dns.values())
    lb = svc_by_name(c, "lb")
    assert lb.ports[0].node_port and lb.health_check_node_port and lb.health_check_node_port != lb.ports[0].node_port
    assert [p.node_port for p in svc_by_name(c, "lb-no-np").ports] == [0]
    assert svc_by_name(c, "lb-no-np").health_check_node_port == 0
    assert [p.node_port for p in svc_by_name(c, "lb-pinned").ports] == [30999, 0]  # requested ones kept


def test_a_taken_node_port_is_skipped(tmp_path):
    alone, _ = allocated(write(tmp_path, service("web", type_="NodePort"), "a.yaml"))
    (np_,) = [p.node_port for p in svc_by_name(alone, "web").ports]
    holder = service("holder", type_="NodePort", selector="{app: h}",
                     ports=f"[{{name: http, port: 80, nodePort: {np_}}}]")
    c, _ = allocated(write(tmp_path, docs(holder, service("web", type_="NodePort")), "b.yaml"))
    assert [p.node_port for p in svc_by_name(c, "web").ports] == [np_ + 1 if np_ < 32767 else 30086]


# --------------------------------------------------------------------------- workloads, pods and slices


def test_replicas_default_zero_and_statefulset_names(tmp_path):
    path = write(tmp_path, docs(
        service("one", selector="{app: one}"), deployment("one", replicas="", labels="{app: one}"),
        service("none", selector="{app: none}"), deployment("none", replicas="0", labels="{app: none}"),
        service("db", selector="{app: db}", extra="  clusterIP: None\n"),
        deployment("db", replicas="3", labels="{app: db}", kind="StatefulSet")))
    c, _ = allocated(path)
    assert len(endpoints_of(c, "one")) == 1
    (empty,) = slices_of(c, "none")  # the controller keeps one empty slice
    assert empty.endpoints == () and empty.ports == ()
    assert len(endpoints_of(c, "db")) == 3
    assert "default/none:http has no endpoints" in c.text


def test_named_target_ports_resolve_by_name_and_protocol_including_sidecars(tmp_path):
    sidecar = """\
      initContainers:
      - name: proxy
        image: registry.example.com/proxy:1
        restartPolicy: Always
        ports: [{name: admin, containerPort: 15000}]
"""
    path = write(tmp_path, docs(
        service("web", ports="[{name: http, port: 80, targetPort: http}, {name: admin, port: 15000, targetPort: admin},"
                             " {name: udp, port: 81, protocol: UDP, targetPort: http}]"),
        deployment("web", replicas="1", spec_extra=sidecar)))
    c, _ = allocated(path)
    (sl,) = slices_of(c, "web")
    # No UDP port named http: the pod is an endpoint of the other two ports only.
    assert sorted((p.name, p.protocol, p.port) for p in sl.ports) == [("admin", "TCP", 15000), ("http", "TCP", 8080)]
    assert "default/web:udp has no endpoints" in c.text


def test_a_daemonset_runs_one_pod_per_fitting_node_and_tolerates_condition_taints(tmp_path):
    nodes = "".join(f"""---
apiVersion: v1
kind: Node
metadata:
  name: {n}
  labels: {{kubernetes.io/os: {os_}}}
spec:
  podCIDR: {cidr}
{taint}status:
  addresses: [{{type: InternalIP, address: {ip}}}]
""" for n, os_, cidr, ip, taint in (
        ("cp-1", "linux", "10.244.0.0/24", "192.168.56.5",
         "  taints: [{key: node-role.kubernetes.io/control-plane, effect: NoSchedule}]\n"),
        ("win-1", "windows", "10.244.9.0/24", "192.168.56.9", ""),
        ("wrk-1", "linux", "10.244.1.0/24", "192.168.56.11", "  unschedulable: true\n"),
        ("wrk-2", "linux", "10.244.2.0/24", "192.168.56.12", "")))
    ds = deployment("agent", replicas="", labels="{app: agent}", kind="DaemonSet",
                    spec_extra="      nodeSelector: {kubernetes.io/os: linux}\n")
    path = write(tmp_path, docs(service("agent", selector="{app: agent}"), ds,
                                service("web"), deployment("web", replicas="4")) + nodes)
    c, _ = allocated(path, hostname="wrk-2")
    # The DaemonSet: not on Windows, not on the control plane (no toleration), but on the cordoned node.
    nodes_of = sorted(e.node_name for sl in slices_of(c, "agent") for e in sl.endpoints)
    assert nodes_of == ["wrk-1", "wrk-2"]
    # The Deployment: only wrk-2 and win-1 take its pods (cp-1 tainted, wrk-1 cordoned), each to the
    # node with the fewest pods, the DaemonSet's counted: win-1 (0), win-1 (1 = 1, first by name), wrk-2, win-1.
    web_nodes = sorted(e.node_name for sl in slices_of(c, "web") for e in sl.endpoints)
    assert web_nodes == ["win-1", "win-1", "win-1", "wrk-2"]
    ips = {e.node_name: e.ip for sl in slices_of(c, "agent") for e in sl.endpoints}
    assert ips == {"wrk-1": "10.244.1.2", "wrk-2": "10.244.2.2"}


def test_a_node_selector_that_matches_nothing_leaves_pods_pending_with_a_notice(tmp_path):
    path = write(tmp_path, docs(service("search", selector="{app: s}"),
                                deployment("search", labels="{app: s}",
                                           spec_extra="      nodeSelector: {disktype: ssd}\n")))
    c, report = allocated(path)
    assert endpoints_of(c, "search") == []
    (p,) = [p for p in report.problems if "Pending" in p.message]
    assert p.notice
    assert str(p) == (f"{path}: document 2 (Deployment default/search): spec.template.spec: the nodeSelector "
                      "disktype=ssd does not match node node-1: its 2 pods stay Pending (no endpoints)")


def test_hostname_names_the_synthesized_node_and_node_ip_its_address(tmp_path):
    path = write(tmp_path, docs(service("web", type_="NodePort"), deployment("web", replicas="1"),
                                service("hn", selector="{app: hn}"),
                                deployment("hn", replicas="1", labels="{app: hn}",
                                           spec_extra="      hostNetwork: true\n")))
    c, report = allocated(path, hostname="edge-7", node_ip=["192.168.77.7"])
    (node,) = c.inputs.nodes
    assert node.name == "edge-7" and node.addresses == ("192.168.77.7",)
    assert node.labels == {"kubernetes.io/os": "linux", "kubernetes.io/hostname": "edge-7"}
    assert all(e.node_name == "edge-7" and e.ip.startswith("10.244.0.") for e in slices_of(c, "web")[0].endpoints)
    assert endpoints_of(c, "hn") == ["192.168.77.7"]  # hostNetwork: the node's address
    # Without an address for the node, a hostNetwork pod has none: said, not guessed.
    c, report = allocated(path)
    assert endpoints_of(c, "hn") == []
    assert any("node node-1 has no address (give --node-ip)" in n for n in report.notes)
    r = run("compile", "--allocate", "--hostname", "Bad Name", path)
    assert r.exit_code == 2 and "--hostname: 'Bad Name' is not a valid node name" in r.stderr


def test_cluster_cidr_gives_the_synthesized_node_its_pod_range(tmp_path):
    c, _ = allocated(write(tmp_path, docs(service("web"), deployment("web"))), cluster_cidr=["10.32.0.0/12"])
    assert c.inputs.nodes[0].pod_cidrs == ("10.32.0.0/24",)
    assert endpoints_of(c, "web") == ["10.32.0.2", "10.32.0.3"]


KUBECTL_GET_ALL = """\
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: web, namespace: default}
  spec:
    clusterIP: 10.96.40.40
    clusterIPs: [10.96.40.40]
    ipFamilies: [IPv4]
    selector: {app: web}
    ports: [{name: http, port: 80, protocol: TCP, targetPort: http}]
- apiVersion: apps/v1
  kind: Deployment
  metadata: {name: web, namespace: default}
  spec:
    replicas: 2
    selector: {matchLabels: {app: web}}
    template:
      metadata: {labels: {app: web}}
      spec: {containers: [{name: web, image: x, ports: [{name: http, containerPort: 8080}]}]}
- apiVersion: apps/v1
  kind: ReplicaSet
  metadata:
    name: web-5d8c7b9f4
    namespace: default
    ownerReferences: [{apiVersion: apps/v1, kind: Deployment, name: web, uid: u1, controller: true}]
  spec:
    replicas: 2
    selector: {matchLabels: {app: web, pod-template-hash: 5d8c7b9f4}}
    template:
      metadata: {labels: {app: web, pod-template-hash: 5d8c7b9f4}}
      spec: {containers: [{name: web, image: x, ports: [{name: http, containerPort: 8080}]}]}
%PODS%"""

POD = """\
- apiVersion: v1
  kind: Pod
  metadata:
    name: web-5d8c7b9f4-{suffix}
    namespace: default
    labels: {{app: web, pod-template-hash: 5d8c7b9f4}}
    ownerReferences: [{{apiVersion: apps/v1, kind: ReplicaSet, name: web-5d8c7b9f4, uid: u2, controller: true}}]
  spec:
    nodeName: wrk-{node}
    containers: [{{name: web, image: x, ports: [{{name: http, containerPort: 8080}}]}}]
  status:
    phase: {phase}
    podIP: {ip}
    podIPs: [{{ip: {ip}}}]
    conditions: [{{type: Ready, status: "{ready}"}}]
"""


def test_a_kubectl_get_all_dump_uses_its_pods_not_new_ones(tmp_path):
    pods = (POD.format(suffix="aaaaa", node=1, phase="Running", ip="10.244.1.7", ready="True")
            + POD.format(suffix="bbbbb", node=2, phase="Running", ip="10.244.2.9", ready="False")
            + POD.format(suffix="ccccc", node=2, phase="Succeeded", ip="10.244.2.10", ready="False"))
    c, _ = allocated(write(tmp_path, KUBECTL_GET_ALL.replace("%PODS%", pods)))
    (sl,) = slices_of(c, "web")
    got = sorted((e.ip, e.ready, e.node_name) for e in sl.endpoints)
    assert got == [("10.244.1.7", True, "wrk-1"), ("10.244.2.9", False, "wrk-2")]
    # Without the Pods, the Deployment stands for its pods (the ReplicaSet is its, so not counted again).
    c, _ = allocated(write(tmp_path, KUBECTL_GET_ALL.replace("%PODS%", ""), "nopods.yaml"))
    assert len(endpoints_of(c, "web")) == 2


def test_a_manifest_pod_is_scheduled_and_addressed(tmp_path):
    pod = """\
apiVersion: v1
kind: Pod
metadata: {name: debug, namespace: default, labels: {app: web}}
spec:
  containers: [{name: c, image: x, ports: [{name: http, containerPort: 9000}]}]
"""
    c, _ = allocated(write(tmp_path, docs(service("web"), pod)))
    (sl,) = slices_of(c, "web")
    assert [(e.ip, e.node_name) for e in sl.endpoints] == [("10.244.0.2", "node-1")]
    assert sl.ports[0].port == 9000


def test_existing_slices_are_kept_and_none_are_added(tmp_path):
    sl = """\
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-live
  namespace: default
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints: [{addresses: [10.244.3.3]}]
"""
    c, _ = allocated(write(tmp_path, docs(service("web"), deployment("web"), sl)))
    assert [s.name for s in slices_of(c, "web")] == ["web-live"]
    assert endpoints_of(c, "web") == ["10.244.3.3"]


def test_documents_with_comments_and_document_end_markers(tmp_path):
    text = ("# Source: chart/templates/svc.yaml\n---\n" + service("web") + "...\n"
            + "# Source: chart/templates/deploy.yaml\n---\n" + deployment("web") + "...\n---\n# empty\n")
    c, report = allocated(write(tmp_path, text))
    assert not report.problems and len(endpoints_of(c, "web")) == 2


# --------------------------------------------------------------------------- every command


def test_every_command_takes_the_flag(tmp_path):
    r = run("trace", str(HELM), "--allocate", "--dst", "0.0.0.0:1")  # parses; an unknown destination is fine
    assert r.exit_code == 0, r.output
    c, _ = allocated(str(HELM))
    fe = svc_by_name(c, "demo-shop-frontend")
    r = run("trace", str(HELM), "--allocate", "--dst", f"{fe.cluster_ip}:80", "--json")
    doc = json.loads(r.stdout)
    assert doc["verdict"] == "DNAT" and len(doc["destinations"]) == 3
    assert all(d["endpoint"].endswith(":8080") and d["node"] == "node-1" for d in doc["destinations"])
    r = run("lint", str(HELM), "--allocate")
    assert r.exit_code == 0, r.output
    r = run("compile", str(HELM), "--allocate", "--mode", "nftables")
    assert r.exit_code == 0 and fe.cluster_ip in r.stdout
    r = run("diff", str(HELM), "--allocate", "--against", write(tmp_path, c.text, "saved.rules"))
    assert r.exit_code == 0, r.output
    r = run("diff", str(HELM), "--against", write(tmp_path, c.text, "saved.rules"))
    assert r.exit_code == 1  # without the flag the rules of the four Services are missing


def test_golden_args_accept_the_flag():
    from rulegen.flags import parse_args_line

    f, _ = parse_args_line("--allocate --hostname wrk-3")
    assert f["allocate"] is True and f["hostname"] == "wrk-3"


def test_the_incremental_compile_falls_back_and_agrees(tmp_path):
    cache = str(tmp_path / "cache")
    report, full_report = Report(), Report()
    got = compile_files_cached([str(HELM)], flags(allocate=True), report, None, cache)
    full = compile_files([str(HELM)], flags(allocate=True), full_report)
    assert type(got) is type(full)  # the full compile, not the per-unit one
    assert got.text == full.text and "10.244.0." in got.text
    assert report.lines() == full_report.lines()
    assert not os.path.exists(cache)  # nothing cached that a later run could take for an allocated compile
    # Without the flag the incremental compile runs, and its notice is the full compile's.
    report = Report()
    inc = compile_files_cached([str(HELM)], flags(), report, None, cache)
    plain = Report()
    compile_files([str(HELM)], flags(), plain)
    assert inc.incremental is not None and report.lines() == plain.lines()


# --------------------------------------------------------------------------- the loader's part


def test_workloads_with_names_or_labels_the_api_server_refuses_are_left_out(tmp_path):
    bad_sts = deployment("db.primary", kind="StatefulSet", labels="{app: db}")
    bad_label = deployment("web", labels="{app: 'we b'}")
    mismatch = deployment("api", labels="{app: api}").replace("matchLabels: {app: api}", "matchLabels: {app: other}")
    path = write(tmp_path, docs(bad_sts, bad_label, mismatch))
    report = Report()
    inputs = load([path], report)
    assert inputs.workloads == []
    lines = report.lines()
    assert "(StatefulSet default/'db.primary'): metadata.name: 'db.primary' is not a valid StatefulSet name" in lines[0]
    assert "(Deployment default/web): spec.selector.matchLabels[app]: 'we b' is not a valid label value" in lines[1]
    assert lines[2].endswith("(Deployment default/api): spec.selector: does not select the pod template's labels "
                             "(the API server refuses such a Deployment) (object left out)")


def test_a_dump_without_the_replicaset_still_links_pods_to_their_deployment(tmp_path):
    """`kubectl get deploy,pods`: the Pods name a ReplicaSet the input lacks; its name is the Deployment's."""
    text = KUBECTL_GET_ALL.replace("%PODS%", POD.format(suffix="aaaaa", node=1, phase="Running", ip="10.244.1.7",
                                                        ready="True"))
    start = text.index("- apiVersion: apps/v1\n  kind: ReplicaSet")
    end = text.index("- apiVersion: v1\n  kind: Pod")
    c, _ = allocated(write(tmp_path, text[:start] + text[end:]))
    assert endpoints_of(c, "web") == ["10.244.1.7"]  # the one Pod, not two more for the Deployment's replicas


def test_compile_json_carries_the_notices():
    doc = json.loads(run("compile", "--json", str(HELM)).stdout)
    (w,) = [w for w in doc["warnings"] if "clusterIP" in w["message"]]
    assert w["notice"] is True and w["file"] is None and w["message"].startswith("4 Services of 6 have no clusterIP")
    doc = json.loads(run("compile", "--json", "--allocate", str(HELM)).stdout)
    assert any(w["message"].startswith("--allocate: 4 cluster IPs") and w["notice"] for w in doc["warnings"])


def test_an_ipv6_range_keeps_its_last_address_usable(tmp_path):
    # fd00:96::/126: ::0 is the network, ::1 the kubernetes Service's; IPv6 has no broadcast, so ::3 is given.
    svcs = [service(f"s{i}", selector=f"{{app: s{i}}}") for i in range(3)]
    c, report = allocated(write(tmp_path, docs(*svcs)), service_cidr=["fd00:96::/126"])
    assert sorted(s.cluster_ip for s in c.inputs.services) == ["fd00:96::2", "fd00:96::3"]
    assert any("no free address left in the service range fd00:96::/126" in str(p) for p in report.problems)


def test_node_ports_run_out_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setattr(allocate, "NODE_PORT_RANGE", (30000, 30001))
    svcs = [service(f"s{i}", type_="NodePort", selector=f"{{app: s{i}}}") for i in range(3)]
    path = write(tmp_path, docs(*svcs))
    c, report = allocated(path)
    assert sorted(p.node_port for s in c.inputs.services for p in s.ports) == [30000, 30001]
    (p,) = report.problems
    assert str(p) == (f"{path}: document 3 (Service default/s2): spec.ports[0].nodePort: no free node port left "
                      "in 30000-30001 (the API server refuses the Service: left out)")
