"""`rulegen trace`'s shared half: follow one new connection through a mode's objects, hop by hop.

`model` holds the records (packet, hop, path, destination, result),
`entry` what every mode's trace shares (the connection, who sends it and
where it enters, what the destination is, folding paths into destinations),
`render` lays a result out (templates/trace.j2, or JSON) and `tables` reads
the behaviour tables (trace.yaml). Walking the objects is each mode's
tracer (`backends.base.Tracer`; iptables mode: `backends/iptables/trace.py`
over the xtables walk in `dataplane/xtables/walk.py`); `trace_compiled`
asks the registry for it.
"""

from __future__ import annotations

from typing import Any

from .. import backends
from .model import Destination, Hop, Path, TraceError, TraceResult

__all__ = ["trace_compiled", "Destination", "Hop", "Path", "TraceError", "TraceResult"]


def trace_compiled(compiled: Any, src: str | None, dst_ip: str, dst_port: int, proto: str = "tcp",
                   **kw: Any) -> TraceResult:
    """Trace a full compile with its mode's tracer (a mode without one: UsageError, exit 2)."""
    tracer = backends.require(compiled.settings.mode, "tracer")
    return tracer.trace_compiled(compiled, src, dst_ip, dst_port, proto, **kw)
