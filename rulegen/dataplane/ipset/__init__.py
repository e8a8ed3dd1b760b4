"""ipsets: the records and `ipset save` parser (`model`), the interface and real client (`client`), the fake (`fake`)."""

from __future__ import annotations

from .client import IPSets, RealIPSets
from .fake import FakeIPSets
from .model import IPSet, IPSetEntry, IPSetError, classify, parse_save, render

__all__ = ["FakeIPSets", "IPSet", "IPSetEntry", "IPSetError", "IPSets", "RealIPSets", "classify", "parse_save",
           "render"]
