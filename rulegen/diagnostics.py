"""Problems found in the user's input, and how they are reported.

kube-proxy keeps going when one object is bad, and so does rulegen: every
problem becomes one `Problem` line naming the file, document, object and
field, collected in a `Report`. The command prints them on stderr and, with
`--strict`, turns any of them into exit status 2. `UsageError` is for input
that cannot be used at all (not YAML, a bad flag value): always exit 2.
Objects of kinds rulegen does not use are counted, not reported one by one:
one summary line per run names the kinds and how many of each.
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
    notice: bool = False  # informational, never fatal
    lint: str = ""  # the slug of the lint code that says the same (a name the API server refuses), if any

    def __str__(self) -> str:
        where = f"{self.place}: {self.field}: " if self.field else f"{self.place}: "
        return _bounded(where + self.message)


LINE_MAX = 600  # characters of one problem line; a hostile value (a 10 MB string) is cut in the middle


def _bounded(line: str) -> str:
    if len(line) <= LINE_MAX:
        return line
    cut = len(line) - (LINE_MAX - 100)
    return f"{line[:LINE_MAX - 200]}...({cut:,} characters left out)...{line[-100:]}"


SUMMARY_KINDS = 12  # kinds named in the skipped-kinds summary; the rest are counted


@dataclass(slots=True)
class Report:
    problems: list[Problem] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # kind rulegen does not use → objects seen
    notes: list[str] = field(default_factory=list)  # about the input as a whole, one line each, never fatal

    def add(self, place: Place, fld: str, message: str, notice: bool = False, lint: str = "") -> None:
        self.problems.append(Problem(place, fld, message, notice, lint))

    def note(self, text: str) -> None:
        """A line about the input as a whole (printed `rulegen: TEXT`), informational."""
        self.notes.append(text)

    def skip(self, kind: str) -> None:
        """One object of a kind rulegen does not use, left out."""
        self.skipped[kind] = self.skipped.get(kind, 0) + 1

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if not p.notice]

    def summary(self) -> str | None:
        """The one line about skipped kinds, or None when nothing was skipped."""
        if not self.skipped:
            return None
        total = sum(self.skipped.values())
        kinds = sorted(self.skipped.items())
        named = ", ".join(f"{_kind_shown(k)} ({n})" for k, n in kinds[:SUMMARY_KINDS])
        if len(kinds) > SUMMARY_KINDS:
            named += f" and {len(kinds) - SUMMARY_KINDS} more kinds"
        objects = "object" if total == 1 else "objects"
        return f"skipped {total} {objects} of kinds rulegen does not use: {named}"

    def lines(self) -> list[str]:
        out = [str(p) for p in self.problems]
        summary = self.summary()
        if summary:
            out.append(f"rulegen: {summary}")
        out += [f"rulegen: {_bounded(n)}" for n in self.notes]
        return out


def _kind_shown(kind: str) -> str:
    """A kind as the summary names it: Kubernetes kinds as they are, anything odd quoted and cut."""
    if kind.isascii() and kind.isalnum() and len(kind) <= 63:
        return kind
    return repr(kind if len(kind) <= 40 else kind[:40] + "...")
