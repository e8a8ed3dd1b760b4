"""Problems found in the user's input, and how they are reported.

kube-proxy keeps going when one object is bad, and so does rulegen: every
problem becomes one `Problem` line naming the file, document, object and
field, collected in a `Report`. The command prints them on stderr and, with
`--strict`, turns any of them into exit status 2. `UsageError` is for input
that cannot be used at all (not YAML, a bad flag value): always exit 2.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class UsageError(Exception):
    """Input or arguments rulegen cannot work with at all (exit 2)."""


@dataclass(frozen=True, slots=True)
class Place:
    """Where an object came from: `svc.yaml: document 2 (Service default/web)`."""

    file: str  # or a flag (`--cluster-cidr`), with document 0
    document: int  # 1-based; 0 when the place is not in a file
    kind: str = ""
    name: str = ""  # "namespace/name" or "name"
    item: int = 0  # 1-based position inside a `kind: List`, 0 when not in one

    def __str__(self) -> str:
        obj = f" ({self.kind} {self.name})" if self.kind else ""
        item = f" item {self.item}" if self.item else ""
        doc = f": document {self.document}" if self.document else ""
        return f"{self.file}{doc}{item}{obj}"


@dataclass(frozen=True, slots=True)
class Problem:
    place: Place
    field: str
    message: str
    notice: bool = False  # informational (skipped kind), never fatal

    def __str__(self) -> str:
        where = f"{self.place}: {self.field}: " if self.field else f"{self.place}: "
        return where + self.message


@dataclass(slots=True)
class Report:
    problems: list[Problem] = field(default_factory=list)

    def add(self, place: Place, fld: str, message: str, notice: bool = False) -> None:
        self.problems.append(Problem(place, fld, message, notice))

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if not p.notice]

    def lines(self) -> list[str]:
        return [str(p) for p in self.problems]
