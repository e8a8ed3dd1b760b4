"""iptables-restore as a program: which one to run, what its complaints mean, and payloads it loads fast.

Owns what the real client and the fake share about the tools:

- the two iptables backends (`nft`: iptables-nft, what current
  distributions ship as `iptables`; `legacy`: iptables-legacy, x_tables),
  the program names of each, and `choose_backend`, which picks one per
  namespace as kube-proxy's iptables-wrapper would;
- `restore_error`: iptables-restore's stderr mapped back to the payload
  line it refused (nf_tables blames COMMIT for a missing jump target; the
  rule that jumps is named instead);
- `nft_payload`: iptables-nft-restore (1.8.x) keeps the chains a
  `--noflush` payload names in a sorted linked list, so a payload naming
  N chains in M lines costs O(N*M) string compares (minutes at 10k
  Services); a `-S` line ahead of the bulk of such a table makes it fetch
  all chains instead. `-S` only lists (to /dev/null), so the rules sent
  are unchanged.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Callable, Sequence

from ...diagnostics import UsageError
from ...kernel.netns import NetnsError
from .model import BUILTIN_CHAINS

# iptables-restore: "line 9: RULE_APPEND failed ..." (nf_tables) or
# "Error occurred at line: 8" / "line 8 failed" (legacy and parse errors).
_LINE_RE = re.compile(r"\bline:?\s+(\d+)")
BACKENDS = ("auto", "nft", "legacy")
IPTABLES_TABLES = frozenset(BUILTIN_CHAINS)
# Above this (lines x chains named) in one table, iptables-nft-restore's
# per-chain cache list costs more than fetching the whole table (see above).
NFT_CHAIN_LIST_MAX = 100_000_000


class ApplyError(UsageError):
    """iptables-restore refused a payload; `line_no`/`line` name the refused line (1-based)."""

    def __init__(self, message: str, line_no: int | None = None, line: str | None = None,
                 stderr: str = "", table: str | None = None) -> None:
        super().__init__(message)
        self.line_no = line_no
        self.line = line
        self.stderr = stderr
        self.table = table


def check_backend(name: str) -> str:
    """An --iptables-backend value that is one of BACKENDS."""
    if name not in BACKENDS:
        raise NetnsError(f"--iptables-backend {name!r}: choose one of {', '.join(BACKENDS)}")
    return name


def restore_error(payload: str, stderr: str, tool: str, table: str | None = None) -> ApplyError:
    """Map iptables-restore's complaint back to the payload line it refused."""
    lines = payload.splitlines()
    m = _LINE_RE.search(stderr)
    no = int(m.group(1)) if m else None
    text = lines[no - 1] if no and 0 < no <= len(lines) else None
    reason = restore_reason(stderr)
    missing = _MISSING_RE.search(reason)
    if no and text == "COMMIT" and missing:
        # nf_tables checks jump targets when the table commits and blames
        # COMMIT; name the first rule of that table that jumps to the chain.
        for i in range(no - 2, -1, -1):
            ln = lines[i]
            if ln.startswith("*"):
                break
            if ln.startswith(("-A ", "-I ")) and rule_target(ln) == missing.group(1):
                no, text = i + 1, ln
    table = table or _table_at(lines, no)
    if text is not None:
        msg = f"{tool} refused line {no} of the payload: {text}" + (f" ({reason})" if reason else "")
    else:
        msg = f"{tool} failed" + (f": {reason}" if reason else "")
    return ApplyError(msg, no, text, stderr, table)


_MISSING_RE = re.compile(r"Chain '([^']+)' does not exist")


def _table_at(lines: list[str], no: int | None) -> str | None:
    for i in range((no or 0) - 1, -1, -1):
        if lines[i].startswith("*"):
            return lines[i][1:].strip()
    return None


def restore_reason(stderr: str) -> str:
    """iptables-restore's complaint without its banner, usage hint and line number."""
    keep = []
    for ln in stderr.splitlines():
        ln = ln.strip()
        if not ln or ln.startswith(("Try `", "Error occurred at line", "#")):
            continue  # "#": iptables-nft's "# Warning: iptables-legacy tables present"
        ln = re.sub(r"^\S+-restore v[\d.]+ \([^)]*\):\s*", "", ln)
        ln = re.sub(r"^line \d+:\s*", "", ln)
        if ln:
            keep.append(ln)
    return "; ".join(keep)


_TOKEN_RE = re.compile(r'"(?:[^"\\]|\\.)*"|\S+')


def rule_target(spec: str) -> str | None:
    """The `-j`/`-g` target of a rule body (quoted comments are skipped whole)."""
    toks = _TOKEN_RE.findall(spec)
    for i, t in enumerate(toks[:-1]):
        if t in ("-j", "-g", "--jump", "--goto"):
            return toks[i + 1]
    return None


def save_tool(family: int) -> str:
    return "ip6tables-save" if family == 6 else "iptables-save"


def restore_tool(family: int) -> str:
    return "ip6tables-restore" if family == 6 else "iptables-restore"


def rule_tool(family: int) -> str:
    return "ip6tables" if family == 6 else "iptables"


_SYSTEM_BACKEND: list[str] = []


def system_backend() -> str:
    """What the plain `iptables` command is on this machine: "nft" or "legacy" (`iptables -V`)."""
    if not _SYSTEM_BACKEND:
        try:
            out = subprocess.run(["iptables", "-V"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            out = ""
        # "iptables v1.8.9 (nf_tables)" / "(legacy)"; before 1.8 there was only legacy.
        _SYSTEM_BACKEND.append("nft" if "nf_tables" in out else "legacy" if out else "nft")
    return _SYSTEM_BACKEND[0]


def choose_backend(requested: str, system: str, present: set[str] | frozenset[str],
                   has_kube: Callable[[str], bool] = lambda b: False) -> str:
    """The backend to use in one namespace, as kube-proxy's iptables-wrapper decides.

    An explicit "nft"/"legacy" wins. For "auto": the backend that already has
    iptables tables in the namespace; if both have, the one whose nat table
    has kube-proxy's KUBE-SERVICES (asked only then: it costs a process);
    otherwise, and on a fresh namespace, the system's `iptables`.
    """
    check_backend(requested)
    if requested != "auto":
        return requested
    if len(present) == 1:
        return next(iter(present))
    if len(present) == 2:
        kube = [b for b in ("nft", "legacy") if has_kube(b)]
        if len(kube) == 1:
            return kube[0]
    return system


def backend_tool(kind: str, family: int, backend: str) -> str:
    """The iptables program for KIND ("", "save", "restore") in BACKEND, e.g. iptables-nft-restore.

    Systems that ship only the plain names get them for their own backend.
    """
    base = rule_tool(family)
    suffix = f"-{kind}" if kind else ""
    name = f"{base}-{backend}{suffix}"
    if shutil.which(name):
        return name
    if backend == system_backend() and shutil.which(base + suffix):
        return base + suffix
    raise NetnsError(f"{name} is not installed (needed for --iptables-backend {backend})")


def nft_payload(payload: str) -> tuple[str, list[int] | None]:
    """PAYLOAD with a `-S` line where iptables-nft-restore would go quadratic.

    Where a table section names so many chains in so many lines that the
    per-chain cache list would cost more than a whole-table fetch, `-S`
    (list the table) goes in before the bulk, which makes iptables-nft fetch
    all chains at once. Commands on built-in chains must come before it (with
    the declarations of the chains they jump to): iptables-nft 1.8.9 creates
    a missing built-in chain only for commands it saw before the switch. The
    table commits as one transaction whatever the order of its commands, so
    moving whole chains' commands (each chain's own order kept) changes
    nothing in the result. Returns the text to send and, when it differs, for
    each sent line the payload line it stands for (0 for `-S`), so errors keep
    the caller's numbering.
    """
    lines = payload.splitlines()
    out: list[str] = []
    where: list[int] = []
    changed = False
    i = 0
    while i < len(lines):
        ln = lines[i]
        if not ln.startswith("*"):
            out.append(ln)
            where.append(i + 1)
            i += 1
            continue
        try:
            end = lines.index("COMMIT", i + 1)
        except ValueError:
            end = len(lines)
        body = list(range(i + 1, end))
        decls = [k for k in body if lines[k].startswith(":")]
        cmds = [k for k in body if lines[k].startswith("-")]
        moved = _reorder_for_nft(lines, lines[i][1:].strip(), body, decls, cmds)
        out.append(ln)
        where.append(i + 1)
        if moved is None:
            out += [lines[k] for k in body]
            where += [k + 1 for k in body]
        else:
            changed = True
            for k in moved:
                out.append("-S" if k < 0 else lines[k])
                where.append(0 if k < 0 else k + 1)
        i = end
    if not changed:
        return payload, None
    return "".join(ln + "\n" for ln in out), where


def _reorder_for_nft(lines: list[str], table: str, body: list[int], decls: list[int],
                     cmds: list[int]) -> list[int] | None:
    """Line indexes of one table's body in sending order with -S (-1) put in; None to leave it."""
    if len(cmds) * len(decls) <= NFT_CHAIN_LIST_MAX:
        return None
    if decls and cmds and max(decls) > min(cmds):
        return None  # not the declarations-first shape this reasoning covers
    builtins = set(BUILTIN_CHAINS.get(table, ()))
    early_cmds = [k for k in cmds if lines[k][3:].partition(" ")[0] in builtins]
    targets = {rule_target(lines[k]) for k in early_cmds}
    early_decls = [k for k in decls if lines[k][1:].split(" ", 1)[0] in targets | builtins]
    early = set(early_cmds) | set(early_decls)
    rest = [k for k in body if k not in early]
    return early_decls + early_cmds + [-1] + rest


def renumber(stderr: str, where: list[int]) -> str:
    """Line numbers in STDERR (of the sent text) → the caller's payload's numbers."""

    def sub(m: re.Match) -> str:
        n = int(m.group(1))
        orig = where[n - 1] if 0 < n <= len(where) else 0
        return m.group(0).replace(m.group(1), str(orig or n))

    return _LINE_RE.sub(sub, stderr)


def split_listing(text: str, chains: Sequence[str]) -> dict[str, list[str]]:
    """`iptables -S` output (`-N`/`-P`/`-A` lines) → rule bodies per chain."""
    out: dict[str, list[str]] = {c: [] for c in chains}
    for ln in text.splitlines():
        if not ln.startswith("-A "):
            continue
        chain, _, spec = ln[3:].partition(" ")
        out.setdefault(chain, []).append(spec)
    return out
