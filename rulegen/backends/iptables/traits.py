"""What iptables mode does where kube-proxy's modes differ (`rulegen migrate` words its causes with these)."""

from __future__ import annotations

from ...traits import Trait

TRAITS = {
    "localhost-nodeports": Trait(
        "answers NodePorts on 127.0.0.1 (route_localnet), unless iptables.localhostNodePorts is false",
        setting="iptables.localhostNodePorts: false"),
    "nodeport-addresses": Trait(
        "takes NodePorts on every node address when nodePortAddresses is unset",
        setting='nodePortAddresses: ["primary"]'),
    "clusterip-other-ports": Trait(
        "leaves a connection to a ClusterIP on a port no Service uses alone (it is routed on, usually to nowhere)",
        fixed="iptables mode writes no rule for the ports of a ClusterIP that no Service uses"),
    "shared-address": Trait(
        "gives a connection to an address and port that several Service ports claim to the first of them in "
        "its order (namespace, name, port): the first rule in KUBE-SERVICES wins",
        fixed="give each Service its own address and port; no setting chooses among claimants"),
    "no-endpoints": Trait(
        "rejects a Service without endpoints in the filter table, before loadBalancerSourceRanges are checked; "
        "the node's own connections to its external and load-balancer IPs are not caught",
        fixed="iptables mode always rejects Services without endpoints this way"),
    "source-ranges": Trait(
        "drops sources outside loadBalancerSourceRanges in the Service's KUBE-FW- chain, the node's own "
        "connections too unless a range holds the node's address",
        fixed="the KUBE-FW- chain follows loadBalancerSourceRanges alone"),
    "local-policy-no-local-endpoint": Trait(
        "drops a connection that a Local traffic policy sends to this node's endpoints when it has none",
        fixed="iptables mode has no fall-back for a Local policy"),
    "local-policy-short-cut": Trait(
        "sends pods' and the node's own connections to a Local-policy external address to every endpoint "
        "(the short-cut for cluster traffic), masqueraded from the node",
        fixed="the short-cut is always written"),
    "balancing": Trait(
        "picks an endpoint at random, each with an equal share (the statistic match)",
        fixed="iptables mode has one way to balance"),
    "affinity": Trait(
        "keeps ClientIP affinity per endpoint with the recent match",
        fixed="iptables mode has one way to keep affinity"),
    "masquerade-all": Trait(
        "reads masqueradeAll from iptables.masqueradeAll",
        setting="iptables.masqueradeAll"),
}
