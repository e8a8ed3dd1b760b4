"""`rulegen trace`: follow one new connection through iptables rules, hop by hop.

`matchers` evaluates single options, `engine` walks tables and chains in
the kernel's order and splits at random rules, `api` is the library entry
(`trace_compiled`, `trace_ruleset`), `model` holds the records and
`render` lays the result out (templates/trace.j2, or JSON).
"""

from .api import trace_compiled, trace_ruleset
from .model import Destination, Hop, Path, TraceError, TraceResult

__all__ = ["trace_compiled", "trace_ruleset", "Destination", "Hop", "Path", "TraceError", "TraceResult"]
