"""IPVS mode: kube-proxy's IPVS virtual servers, KUBE-* ipsets, kube-ipvs0 addresses and iptables glue."""
