"""nftables: the script model (`script`), raw nf_tables netlink (`netlink`) and the fast loader (`loader`).

Why the loader exists and how it is shaped is written down, with
measurements, in docs/nftables-load.md.
"""
