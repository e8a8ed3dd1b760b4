"""The lint vocabulary: every finding code with its fixed severity, and the Finding record.

`CODES` is the one table of what `rulegen lint` can say; `docs/lint.md`,
`--ignore` validation and the fixture tests all read it, so a code cannot
exist in one place and be missing in another. A code's severity never
depends on the case: where the same symptom is harmless in one setup and
fatal in another (a Local-policy Service without a local endpoint behind a
health-checked load balancer, or on a bare NodePort), the two cases get two
codes.
"""

from __future__ import annotations

from dataclasses import dataclass

SEVERITIES = ("error", "warning", "info")
SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}


@dataclass(frozen=True, slots=True)
class Code:
    code: str
    severity: str
    slug: str
    meaning: str  # one line for docs/lint.md
    fix: str  # one line for docs/lint.md


_TABLE = (
    Code("RG001", "warning", "no-cluster-ip",
         "the Service has no usable clusterIP, so kube-proxy writes no rules for it",
         "give spec.clusterIP (take the live object from `kubectl get svc -o yaml`)"),
    Code("RG002", "error", "refused-name",
         "a name, namespace, port name, label or nodeName the API server refuses (RFC 1035/1123 names, IANA_SVC_NAME "
         "port names, label syntax): the object is left out, as kube-proxy never sees it",
         "rename it within the rule the message names; `kubectl apply --dry-run=server` shows the API server's verdict"),
    Code("RG101", "error", "nodeport-out-of-range",
         "a nodePort or healthCheckNodePort lies outside the node-port range (default 30000-32767); the apiserver rejects it",
         "pick a port inside the range, leave nodePort out to get one allocated, or pass the cluster's --service-node-port-range"),
    Code("RG102", "error", "nodeport-duplicate",
         "two Service ports (or a health-check port) share one nodePort and protocol; only one of them gets the traffic",
         "give each Service port its own nodePort, or leave nodePort out to get one allocated"),
    Code("RG103", "error", "port-not-in-slices",
         "the Service has EndpointSlices, but none carries this Service port (name + protocol); the port has no endpoints and is rejected",
         "EndpointSlice ports must carry the Service port's name and protocol (not the targetPort's name)"),
    Code("RG104", "error", "targetport-name-unknown",
         "a named targetPort that no selected Pod or pod template declares as a container port; the port gets no endpoints",
         "name the container port in the Pod template, or use a port number as targetPort"),
    Code("RG105", "warning", "targetport-mismatch",
         "the EndpointSlices carry a different port number than the Service's numeric targetPort (stale or hand-written slices)",
         "regenerate the slices, or correct targetPort; kube-proxy sends traffic to the slice's port"),
    Code("RG106", "info", "targetport-undeclared",
         "a numeric targetPort that the selected Pods or pod templates do not declare among their container ports: "
         "traffic still goes there, and is refused if nothing listens",
         "check the port the container listens on; declare it as a containerPort (named, to use as targetPort) or correct targetPort"),
    Code("RG200", "warning", "no-endpointslices-in-input",
         "the input holds no EndpointSlice or Endpoints object at all, so no Service's endpoints can be checked (said once, instead of one RG201 per port)",
         "add the slices to the input: `kubectl get endpointslices -A -o yaml` (with the Services: `kubectl get svc,endpointslices -A -o yaml`)"),
    Code("RG201", "error", "no-endpoints",
         "the Service port has no endpoints; every connection is rejected",
         "make Pods match the selector and become ready, or provide EndpointSlices for a selector-less Service"),
    Code("RG202", "error", "no-ready-endpoints",
         "the Service port has endpoints but none is ready or serving; every connection is rejected",
         "fix the Pods' readiness (kubectl describe pod; readiness probes)"),
    Code("RG203", "warning", "only-terminating-endpoints",
         "no ready endpoint; only terminating Pods that still serve take the traffic, until they exit",
         "check why the replacement Pods are not ready before the old ones are gone"),
    Code("RG204", "error", "local-policy-no-local-endpoint",
         "externalTrafficPolicy Local and no endpoint on this node: external traffic to this node's NodePort / external IPs is dropped",
         "run an endpoint on every node that receives external traffic (DaemonSet / spread), or use externalTrafficPolicy Cluster"),
    Code("RG205", "warning", "lb-local-policy-no-local-endpoint",
         "LoadBalancer with externalTrafficPolicy Local and no endpoint on this node: the LB health check steers away, direct NodePort traffic is dropped",
         "make sure the load balancer health-checks healthCheckNodePort and clients do not use NodePorts directly"),
    Code("RG206", "warning", "local-policy-uneven",
         "externalTrafficPolicy Local with endpoints on only some nodes or unevenly spread: load per endpoint is uneven, nodes without one drop traffic",
         "spread replicas evenly over nodes (topologySpreadConstraints or a DaemonSet)"),
    Code("RG207", "warning", "internal-local-no-local-endpoint",
         "internalTrafficPolicy Local and no endpoint on this node: this node's Pods get their connections to the ClusterIP dropped",
         "run an endpoint on every node whose Pods use the Service (DaemonSet), or use internalTrafficPolicy Cluster"),
    Code("RG301", "error", "selector-matches-nothing",
         "the selector matches no Pod or workload pod template in the Service's namespace (names the closest when one almost matches)",
         "fix the selector or the Pod labels (kubectl get pods --show-labels)"),
    Code("RG302", "warning", "selector-near-miss",
         "the selector matches some Pods, but another Pod's labels almost match (one label off by a small edit): it gets no traffic",
         "correct the mistyped label on that Pod (or its template)"),
    Code("RG303", "warning", "pods-unschedulable",
         "a selected workload's pods fit none of the input's Nodes (nodeSelector, nodeName, taints): they stay Pending and serve nothing",
         "match the pod template's nodeSelector, nodeName or tolerations to the Nodes (kubectl get nodes --show-labels)"),
    Code("RG401", "warning", "source-ranges-ignored",
         "loadBalancerSourceRanges on a Service that is not type LoadBalancer: nothing is filtered",
         "use type LoadBalancer, or restrict sources with a NetworkPolicy or node firewall"),
    Code("RG402", "error", "external-ip-node-address",
         "an externalIP is an address of a node: kube-proxy captures that port on the node's own address",
         "use an address no node owns (routed to the nodes), or a NodePort / LoadBalancer Service"),
    Code("RG403", "error", "external-ip-pod-range",
         "an externalIP lies inside the pod network (cluster CIDR or a node's podCIDR): traffic to that Pod address is hijacked",
         "use an address outside the pod network"),
    Code("RG404", "error", "external-ip-service-range",
         "an externalIP lies inside a service range (ServiceCIDR / --service-cidr): it can collide with an allocated ClusterIP",
         "use an address outside the service ranges"),
    Code("RG501", "warning", "affinity-masqueraded",
         "sessionAffinity ClientIP while clients arrive masqueraded or through a proxy (the message names the condition): clients look alike",
         "use externalTrafficPolicy Local, do affinity at the load balancer / ingress, or drop sessionAffinity"),
    Code("RG502", "error", "udp-no-ready-endpoints",
         "a UDP Service port without ready endpoints: datagrams are rejected, and conntrack entries made meanwhile keep black-holing the flow after it recovers",
         "once endpoints are back: `conntrack -D -p udp --orig-dst CLUSTER_IP --orig-port-dst PORT` (and the NodePort / external IPs)"),
    Code("RG601", "warning", "slice-without-service-label",
         "an EndpointSlice without the kubernetes.io/service-name label: kube-proxy ignores it",
         "label it `kubernetes.io/service-name: SERVICE`"),
    Code("RG602", "warning", "slice-service-missing",
         "an EndpointSlice (or Endpoints) whose Service is not in the input: kube-proxy writes no rules for it",
         "include the Service in the input, or delete the stale slice"),
    Code("RG701", "info", "nodeport-exposure",
         "a NodePort opens that port on every listed node address (localhost included when localhost NodePorts are on)",
         "if that is more than intended: restrict nodePortAddresses, firewall the port, or use ClusterIP behind an ingress"),
    Code("RG801", "warning", "ipvs-strict-arp-off",
         "IPVS mode with ipvs.strictARP off while a LoadBalancer IP is announced from inside the cluster (MetalLB, "
         "kube-vip, or an address in a node's subnet): kube-ipvs0 holds the IP on every node, so every node answers "
         "ARP for it and traffic lands on whichever node answered last",
         "set ipvs.strictARP: true in the KubeProxyConfiguration (kube-proxy then sets arp_ignore=1 and "
         "arp_announce=2), as MetalLB and kube-vip require for IPVS mode"),
    Code("RG802", "error", "ipvs-unknown-scheduler",
         "ipvs.scheduler names a scheduler kube-proxy's configuration check refuses: kube-proxy does not start, "
         "so no Service gets rules on the node",
         "use one of rr, wrr, lc, wlc, lblc, lblcr, sh, dh, sed, nq, mh (empty means rr)"),
    Code("RG803", "info", "ipvs-deprecated",
         "kube-proxy's IPVS mode is deprecated (Kubernetes v1.35); the nftables mode is its successor",
         "see what moving changes for these Services with `rulegen migrate FILES --from ipvs --to nftables`"),
    # Pitfalls of one mode (the backend's `lint_checks`): nftables mode RG811-RG819.
    Code("RG811", "error", "nft-versions-too-old",
         "nftables mode needs Linux 5.13 or later and nft 1.0.1 or later, and the node's kernel or nft (as given, "
         "or as the Node reports its kernel) is older: kube-proxy does not start in this mode",
         "upgrade the node's kernel or nftables package, or keep this node in iptables mode"),
    Code("RG812", "warning", "nft-nodeport-primary-only",
         "nodePortAddresses is unset, so nftables mode takes NodePorts on the node's primary address only: "
         "the node's other addresses, which iptables mode served, stop answering",
         "set nodePortAddresses to the CIDRs clients use (0.0.0.0/0 for every address), or send clients to the primary address"),
    Code("RG813", "warning", "nft-no-localhost-nodeports",
         "nodePortAddresses holds loopback, but nftables mode never answers NodePorts on 127.0.0.1 / ::1",
         "connect to a node address instead of localhost (iptables mode's "
         "iptables_localhost_nodeports_accepted_packets_total metric shows who relies on it)"),
    Code("RG814", "warning", "nft-iptables-setting-ignored",
         "the configuration sets iptables.masqueradeAll, masqueradeBit or localhostNodePorts, which nftables mode "
         "does not read (it reads the nftables section): the setting has no effect",
         "set nftables.masqueradeAll / nftables.masqueradeBit (localhost NodePorts have no nftables equivalent)"),
    Code("RG815", "info", "nft-nodeport-firewall",
         "nftables mode writes no rules that let NodePort traffic through a host firewall (iptables mode does): "
         "an nftables-based firewall on the node (firewalld, nftables.service) must allow the ports itself",
         "allow the node-port range (default 30000-32767) and health-check ports in the node's firewall"),
    Code("RG816", "warning", "nft-no-conntrack-workaround",
         "the node's kernel is older than 6.1, whose conntrack can reset long-lived TCP connections to Services; "
         "iptables mode drops the INVALID packets that cause it, nftables mode does not",
         "run kube-proxy with --conntrack-tcp-be-liberal (rulegen: --tcp-be-liberal), or use Linux 6.1 or later"),
    Code("RG817", "info", "nft-versions-unknown",
         "nftables mode needs Linux 5.13 or later and nft 1.0.1 or later, and the node's versions are not known here",
         "pass --kernel-version and --nft-version (uname -r, nft --version), or a Node with status.nodeInfo.kernelVersion"),
    # A node's dump read beside the input (`--rules`): foreign rules in kube-proxy's way, RG901-RG919
    # (RG901-RG908 an iptables node's iptables-save, RG911-RG916 an nftables node's nft list ruleset).
    Code("RG901", "error", "node-foreign-drop",
         "on a node dump (`--rules`): a DROP or REJECT outside kube-proxy's chains stops Service connections "
         "(the rule, and the Service ports it hits, are named)",
         "let Service traffic through before it, or move it after kube-proxy's jumps"),
    Code("RG902", "error", "node-foreign-dnat",
         "on a node dump: a DNAT or REDIRECT outside kube-proxy's chains, ahead of kube-proxy's jump, takes Service "
         "connections elsewhere (a Docker published port on a NodePort)",
         "give it a port no Service uses, or move it after kube-proxy's jump"),
    Code("RG903", "error", "node-foreign-nat-accept",
         "on a node dump: an ACCEPT in nat PREROUTING/OUTPUT (or a chain they call) ahead of kube-proxy's jump: "
         "no Service DNAT happens for the connections it takes",
         "move it after kube-proxy's jump in nat, or narrow it to traffic no Service uses"),
    Code("RG904", "warning", "node-foreign-filter-accept",
         "on a node dump: an ACCEPT in filter ahead of kube-proxy's jumps: kube-proxy's filter rules (REJECT "
         "without endpoints, loadBalancerSourceRanges) are skipped for the connections it takes",
         "move it after kube-proxy's jumps, or let kube-proxy re-insert its jumps first"),
    Code("RG905", "error", "node-foreign-return",
         "on a node dump: a RETURN in a built-in chain ahead of kube-proxy's jump ends the chain there; the policy "
         "decides and kube-proxy's rules are skipped",
         "move it after kube-proxy's jump, or narrow it to traffic no Service uses"),
    Code("RG906", "error", "node-policy-drop",
         "on a node dump: a built-in chain's policy DROP drops Service connections no rule accepted (a Local-policy "
         "NodePort behind Docker's or ufw's FORWARD policy)",
         "accept the Service traffic explicitly in the firewall, or set the policy to ACCEPT"),
    Code("RG907", "warning", "node-policy-drop-kube-only",
         "on a node dump: a built-in chain's policy DROP that only kube-proxy's own ACCEPT keeps open for Service "
         "connections: a firewall reload that flushes kube-proxy's rules closes them",
         "add the host's own ACCEPT for the pod network and node ports, or set the policy to ACCEPT"),
    Code("RG908", "error", "node-missing-jump",
         "on a node dump: a jump kube-proxy installs from a built-in chain is missing (a firewall reload flushed it): "
         "Service traffic there never meets kube-proxy's rules",
         "restart kube-proxy (it inserts its jumps on every sync) and find what flushed them"),
    # IPVS nodes: Service traffic is for a local address (kube-ipvs0, a node address), so it crosses filter
    # INPUT before IPVS takes it, and IPVS sends the packet on as the node's own (OUTPUT, POSTROUTING).
    Code("RG909", "error", "node-ipvs-input-drop",
         "on an IPVS node's dump: a DROP or REJECT outside kube-proxy's chains in filter INPUT stops Service "
         "connections before IPVS takes them (in IPVS mode they cross INPUT, not FORWARD: a firewall that is "
         "harmless in iptables mode refuses them)",
         "accept the Service traffic in INPUT before it (the cluster IPs on kube-ipvs0 and the node ports; "
         "firewalld: open the node-port range, the pod network in the trusted zone), or move the rule after "
         "kube-proxy's jumps"),
    Code("RG910", "error", "node-ipvs-after-drop",
         "on an IPVS node's dump: a DROP or REJECT outside kube-proxy's chains stops the packet IPVS sends on to "
         "the real server it chose (filter OUTPUT or later: IPVS forwards as the node's own packet)",
         "let the node's own packets to the pod network through (filter OUTPUT), or narrow the rule"),
    Code("RG911", "error", "node-nft-foreign-drop",
         "on an nftables node's ruleset (`--mode nftables --rules`): a drop or reject in another table's base chain "
         "(or a chain it calls) stops Service connections; kube-proxy's accepts do not keep another table's base "
         "chain open (the rule, its hook and priority, and the Service ports it hits are named)",
         "accept Service traffic in that table first (`ct status dnat accept`, the node ports), or narrow the rule"),
    Code("RG912", "error", "node-nft-foreign-dnat",
         "on an nftables node's ruleset: a DNAT in another table's nat chain that runs before kube-proxy's takes "
         "Service connections elsewhere, and kube-proxy's nat chain is not consulted for them",
         "give it a port no Service uses, or a nat priority after kube-proxy's (dstnat)"),
    Code("RG913", "error", "node-nft-policy-drop",
         "on an nftables node's ruleset: another table's base chain with policy drop drops Service connections none "
         "of its rules accepted (kube-proxy's accepts end only kube-proxy's own chains)",
         "accept the Service traffic in that chain (`ct status dnat accept`), or set its policy to accept"),
    Code("RG914", "error", "node-nft-missing-base-chain",
         "on an nftables node's ruleset: kube-proxy's table, or one of the base chains it installs, is missing or "
         "on another hook or priority: Service traffic there never meets kube-proxy's rules",
         "restart kube-proxy (it re-creates its base chains) and find what deleted them (a `flush ruleset`)"),
    Code("RG915", "warning", "node-nft-iptables-nft-table",
         "on an nftables node's ruleset: a table iptables-nft manages holds xtables matches nft cannot spell, so "
         "what it does to Service traffic is not checked (nor traced) from the ruleset",
         "lint the node's iptables-save as well (`rulegen lint --rules iptables.save`), or move those rules to nftables"),
    Code("RG916", "error", "node-nft-foreign-notrack",
         "on an nftables node's ruleset: a `notrack` in another table takes Service connections out of conntrack, so "
         "no nat chain is consulted for them and kube-proxy's DNAT never happens",
         "exempt Service traffic (cluster IPs, node ports) from the notrack rule, or remove it"),
)

CODES: dict[str, Code] = {c.code: c for c in _TABLE}
BY_SLUG: dict[str, Code] = {c.slug: c for c in _TABLE}


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem with one object; `port` narrows it to Service ports ("http:80/TCP")."""

    code: str
    kind: str
    name: str  # "namespace/name", a cluster-scoped name, or "" for the input as a whole (kind "input")
    message: str
    hint: str
    port: str = ""
    where: str = ""  # the object's file place, for the text output

    @property
    def severity(self) -> str:
        return CODES[self.code].severity

    @property
    def object(self) -> str:
        if not self.name:  # a finding about the input as a whole
            return self.kind
        base = f"{self.kind} {self.name}"
        if not self.port:
            return base
        return f"{base} {'ports' if ', ' in self.port else 'port'} {self.port}"

    def sort_key(self) -> tuple:
        return (SEVERITY_RANK[self.severity], self.code, self.kind, self.name, self.port, self.message)

    def to_json(self) -> dict[str, str]:
        return {"code": self.code, "severity": self.severity, "object": self.object,
                "message": self.message, "hint": self.hint}


def port_label(name: str, port: int, protocol: str) -> str:
    """A Service port as findings name it: `http:80/TCP`, or `80/TCP` when unnamed."""
    return f"{name}:{port}/{protocol}" if name else f"{port}/{protocol}"


def docs_lines() -> list[str]:
    """The docs/lint.md table rows, one per code."""
    return [f"| {c.code} | {c.severity} | {c.meaning} | {c.fix} |" for c in _TABLE]
