"""A mode's side of a known difference between kube-proxy's modes: the record `Backend.traits` returns.

Each mode's package describes, in its `traits` module, what it does at
each place where kube-proxy's modes are known to differ (keyed by the
cause ids of `rulegen.migrate.causes`), and which of its settings, if
any, makes it behave as the others. `rulegen migrate` finds a difference
in the traces, names its cause with the table of causes, and words it
with the two modes' traits. The record lives here, below both, so a
backend need not import the migrate command to describe itself.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Trait:
    """What one mode does at one known difference.

    `does` ends the sentence "<mode> ...". `setting` is the setting of
    this mode that makes it behave as the other modes do, written as it
    goes in a KubeProxyConfiguration; `fixed` says why no setting does,
    when none does.
    """

    does: str
    setting: str = ""
    fixed: str = ""
