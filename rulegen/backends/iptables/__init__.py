"""iptables mode: kube-proxy's iptables-restore payload."""
