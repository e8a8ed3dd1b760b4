"""What IPVS mode does where kube-proxy's modes differ (`rulegen migrate` words its causes with these)."""

from __future__ import annotations

from ...traits import Trait

TRAITS = {
    "localhost-nodeports": Trait(
        "has no NodePort on 127.0.0.1 (no virtual server there): the connection reaches whatever listens on the "
        "node's own port",
        fixed="IPVS mode makes no virtual server on a loopback address, whatever the settings"),
    "nodeport-addresses": Trait(
        "takes NodePorts on every node address when nodePortAddresses is unset",
        setting='nodePortAddresses: ["primary"]'),
    "clusterip-other-ports": Trait(
        "rejects a connection to a ClusterIP on a port no Service uses: the ClusterIP is bound to kube-ipvs0 "
        "and KUBE-IPVS-FILTER rejects new connections to its other ports",
        fixed="IPVS mode always binds ClusterIPs to kube-ipvs0 and installs KUBE-IPVS-FILTER"),
    "shared-address": Trait(
        "keeps one virtual server for an address and port that several Service ports claim, with the real "
        "servers of the last of them written",
        fixed="give each Service its own address and port; no setting chooses among claimants"),
    "no-endpoints": Trait(
        "keeps the virtual servers of a Service without endpoints, with no real server: every connection to "
        "them is refused, the node's own too, and loadBalancerSourceRanges are checked first",
        fixed="IPVS mode always keeps the virtual servers"),
    "source-ranges": Trait(
        "filters loadBalancerSourceRanges with ipsets: the node's own connection is dropped only when it comes "
        "from the load-balancer IP itself, and a 0.0.0.0/0 range, which the kernel refuses in the set, drops "
        "every other source",
        fixed="the ipset filter is IPVS mode's only one"),
    "local-policy-no-local-endpoint": Trait(
        "falls back to the cluster endpoints (unmasqueraded) when a Local traffic policy has no endpoint on "
        "this node, and refuses a ClusterIP-only port that has none",
        fixed="the fall-back is IPVS mode's own; no setting turns it off"),
    "local-policy-short-cut": Trait(
        "sends every client of a Local-policy external address, pods and the node included, to this node's "
        "endpoints only, unmasqueraded",
        fixed="IPVS mode has no short-cut for cluster traffic"),
    "balancing": Trait(
        "lets the IPVS scheduler (ipvs.scheduler) choose the endpoint",
        setting='ipvs.scheduler: "rr"'),
    "affinity": Trait(
        "keeps ClientIP affinity per virtual server (IPVS persistence)",
        fixed="persistence is IPVS mode's only affinity"),
    "masquerade-all": Trait(
        "reads masqueradeAll from iptables.masqueradeAll",
        setting="iptables.masqueradeAll"),
}
