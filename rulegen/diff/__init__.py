"""`rulegen diff`'s shared half: the neutral comparison of two sides, its records and its report.

`model` (Side, Container, Layout; DiffResult and its JSON), `core` (the
comparison: ordered containers by a longest increasing subsequence,
unordered ones by membership) and `render` (the text report). What a
mode's IR looks like as a side is its diff view's business
(`backends.base.DiffView`; the xtables layout every iptables-based mode
shares is `dataplane/xtables/views.py`).
"""

from __future__ import annotations

from .core import compare
from .model import Container, ContainerDiff, DiffResult, Layout, RuleChange, Side
from .render import render_text, summary_line

__all__ = ["compare", "Container", "ContainerDiff", "DiffResult", "Layout", "RuleChange", "Side", "render_text",
           "summary_line"]
