"""The `kube-ipvs0` dummy interface and the service addresses bound to it: interface and real client (`client`), fake (`fake`)."""

from __future__ import annotations

from .client import KUBE_IPVS0, LinkError, Links, RealLinks, canonical_address
from .fake import FakeLinks

__all__ = ["KUBE_IPVS0", "FakeLinks", "LinkError", "Links", "RealLinks", "canonical_address"]
