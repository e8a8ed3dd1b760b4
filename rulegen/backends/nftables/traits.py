"""What nftables mode does where kube-proxy's modes differ (`rulegen migrate` words its causes with these)."""

from __future__ import annotations

from ...traits import Trait

TRAITS = {
    "localhost-nodeports": Trait(
        "has no NodePorts on 127.0.0.1 (nor ::1), whatever nodePortAddresses holds",
        fixed="nftables mode does not support localhost NodePorts; clients must use a node address"),
    "nodeport-addresses": Trait(
        "takes NodePorts only on the node's primary address when nodePortAddresses is unset",
        setting='nodePortAddresses: ["0.0.0.0/0"]'),
    "clusterip-other-ports": Trait(
        "rejects a connection to a ClusterIP on a port no Service uses (cluster-ips-check)",
        fixed="cluster-ips-check is always installed"),
    "shared-address": Trait(
        "keeps one map element for an address and port that several Service ports claim: the last of them "
        "written (namespace, name, port) replaces the others",
        fixed="give each Service its own address and port; no setting chooses among claimants"),
    "no-endpoints": Trait(
        "rejects a Service without endpoints in its filter hooks (input, forward and output: the node's own "
        "connections too), after loadBalancerSourceRanges are checked",
        fixed="nftables mode always rejects Services without endpoints this way"),
    "source-ranges": Trait(
        "drops sources outside loadBalancerSourceRanges before DNAT (firewall-check), the node's own "
        "connections too unless a range holds the node's address",
        fixed="the firewall chain follows loadBalancerSourceRanges alone"),
    "local-policy-no-local-endpoint": Trait(
        "drops a connection that a Local traffic policy sends to this node's endpoints when it has none",
        fixed="nftables mode has no fall-back for a Local policy"),
    "local-policy-short-cut": Trait(
        "sends pods' and the node's own connections to a Local-policy external address to every endpoint "
        "(the short-cut for cluster traffic), masqueraded from the node",
        fixed="the short-cut is always written"),
    "balancing": Trait(
        "picks an endpoint at random, each with an equal share (numgen)",
        fixed="nftables mode has one way to balance; sessionAffinity: ClientIP keeps a client on one endpoint"),
    "affinity": Trait(
        "keeps ClientIP affinity per endpoint in dynamic sets",
        fixed="nftables mode has one way to keep affinity"),
    "masquerade-all": Trait(
        "reads masqueradeAll from nftables.masqueradeAll",
        setting="nftables.masqueradeAll"),
}
