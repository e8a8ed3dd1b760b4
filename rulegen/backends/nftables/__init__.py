"""nftables mode: kube-proxy's `ip kube-proxy` / `ip6 kube-proxy` table, as an `nft -f` script."""
