"""The API server's rules for names: object names, namespaces, port names, labels; and Linux interface names.

kube-proxy only ever sees objects the API server accepted, and those names
end up in its rules (`--comment default/web:http`). The loader refuses what
the API server's validation refuses, with the same rules: an RFC 1035 label
for a Service name, an RFC 1123 label for a namespace and for Service,
Endpoints and EndpointSlice port names, an RFC 1123 subdomain for the names
of EndpointSlices, Endpoints, Nodes, Pods and ServiceCIDRs (and so for
nodeName fields), IANA_SVC_NAME for container port names and named
targetPorts, and the label key and value syntax. kube-proxy's own
configuration names interfaces (`detectLocal.bridgeInterface`,
`interfaceNamePrefix`) that go into the payload as `-i NAME`; those follow
the kernel's rules for interface names, narrowed to what iptables-restore
reads as one plain word.

Each check returns "" for a valid string, else why it is not valid, worded
after the API server's messages. The checks that see the same strings over
and over (a cluster has a few namespaces, node names and port names across
100,000 endpoints) remember the strings they passed, in a set the loader's
hot loops test inline (`x in check.good`: no call, ~40 ns).
"""

from __future__ import annotations

import re
from typing import Callable

# Go's regexp `^...$` anchors at the ends of the text only; Python's `$` also
# matches before a final newline, so every pattern here is used with fullmatch.
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_PORT_NAME_CHARS = re.compile(r"[-a-z0-9]+")

LABEL_MAX = 63
SUBDOMAIN_MAX = 253
PORT_NAME_MAX = 15
IFNAMSIZ = 16  # the kernel's buffer for an interface name, its final NUL included

CACHE_MAX = 1 << 16  # valid strings remembered per check: bounded, whatever a hostile input holds

_LABEL_WORDS = ("must consist of lower-case letters, digits and '-', and start and end with a letter or digit "
                "(an RFC 1123 label)")
_SUBDOMAIN_WORDS = ("must consist of lower-case letters, digits, '-' and '.', each dot-separated part starting "
                    "and ending with a letter or digit (an RFC 1123 subdomain)")
_DNS1035_WORDS = ("must consist of lower-case letters, digits and '-', start with a letter and end with a "
                  "letter or digit (an RFC 1035 label)")
_LABEL_VALUE_WORDS = ("must be empty or consist of letters, digits, '-', '_' and '.', and start and end with "
                      "a letter or digit")


def _too_long(s: str, limit: int) -> str:
    # Only called once the pattern matched: the text is ASCII, characters are bytes.
    return f"must be no more than {limit} characters" if len(s) > limit else ""


class Remembered:
    """A check that remembers the strings it passed (`good`), up to a bound."""

    __slots__ = ("check", "good")

    def __init__(self, check: Callable[[str], str]):
        self.check = check
        self.good: set[str] = set()

    def __call__(self, s: str) -> str:
        if s in self.good:
            return ""
        why = self.check(s)
        if not why and len(self.good) < CACHE_MAX:
            self.good.add(s)
        return why


@Remembered
def dns1123_label(s: str) -> str:
    """Namespaces, and Service / Endpoints / EndpointSlice port names."""
    if not _DNS1123_LABEL.fullmatch(s):
        if _DNS1123_SUBDOMAIN.fullmatch(s):
            return "must not contain dots"
        return _LABEL_WORDS
    return _too_long(s, LABEL_MAX)


def dns1123_subdomain(s: str) -> str:
    """The names of EndpointSlices, Endpoints, Nodes, Pods and ServiceCIDRs (each distinct: not remembered)."""
    if not _DNS1123_SUBDOMAIN.fullmatch(s):
        return _SUBDOMAIN_WORDS
    return _too_long(s, SUBDOMAIN_MAX)


# A Node's name, as nodeName fields and hints repeat it: the same rule, remembered.
node_name = Remembered(dns1123_subdomain)


def dns1035_label(s: str) -> str:
    """Service names (each is distinct: nothing to remember)."""
    if not _DNS1035_LABEL.fullmatch(s):
        return _DNS1035_WORDS
    return _too_long(s, LABEL_MAX)


@Remembered
def port_name(s: str) -> str:
    """IANA_SVC_NAME: container port names and named targetPorts."""
    if not _PORT_NAME_CHARS.fullmatch(s):
        return "must contain only lower-case letters, digits and '-' (an IANA_SVC_NAME)"
    if len(s) > PORT_NAME_MAX:
        return f"must be no more than {PORT_NAME_MAX} characters"
    if not any("a" <= c <= "z" for c in s):
        return "must contain at least one letter (a-z)"
    if "--" in s:
        return "must not contain consecutive hyphens"
    if s[0] == "-" or s[-1] == "-":
        return "must not begin or end with a hyphen"
    return ""


@Remembered
def label_key(s: str) -> str:
    """A label key (a "qualified name"): an optional DNS subdomain prefix and '/', then a name."""
    parts = s.split("/")
    if len(parts) > 2:
        return "must be a name with an optional DNS subdomain prefix and '/' (e.g. 'example.com/my-name')"
    name = parts[-1]
    if len(parts) == 2:
        if not parts[0]:
            return "prefix part must not be empty"
        why = node_name(parts[0])  # the remembering subdomain check: prefixes repeat
        if why:
            return "prefix part " + why
    if not name:
        return "name part must not be empty"
    if not _LABEL_NAME.fullmatch(name):
        return ("name part must consist of letters, digits, '-', '_' and '.', and start and end with "
                "a letter or digit")
    if len(name) > LABEL_MAX:
        return f"name part must be no more than {LABEL_MAX} characters"
    return ""


@Remembered
def label_value(s: str) -> str:
    if s and not _LABEL_NAME.fullmatch(s):
        return _LABEL_VALUE_WORDS
    return _too_long(s, LABEL_MAX)


def labels(d: dict) -> tuple[str, str, str, str] | None:
    """The first label of D the API server refuses, as (key, the refused text, "key" or "value", why).

    None when all are valid. Keys and values that are not strings are left to
    the caller's type checks.
    """
    good_keys, good_values = label_key.good, label_value.good
    for k, v in d.items():
        if v.__class__ is str and k in good_keys and v in good_values:
            continue
        if k.__class__ is str:
            why = label_key(k)
            if why:
                return k, k, "key", why
        if v.__class__ is str:
            why = label_value(v)
            if why:
                return k, v, "value", why
    return None


# iptables-restore splits a line at blanks and reads `"` and `\` as quoting;
# the kernel refuses '/', ':' and blanks in interface names (dev_valid_name).
# A name needs neither quoting nor escaping when it keeps to these.
_IFNAME = re.compile(r"[A-Za-z0-9_.@%+=-]+")


def interface_name(s: str, prefix: bool = False) -> str:
    """A Linux interface name as `-i NAME` writes it; PREFIX: `interfaceNamePrefix`, written `-i NAME+`."""
    room = IFNAMSIZ - 1 - (1 if prefix else 0)
    if not s:
        return "must not be empty"
    if s in (".", ".."):
        return "is not an interface name the kernel allows"
    if not _IFNAME.fullmatch(s):
        return ("must consist of letters, digits and '_', '.', '-', '@', '%', '+' or '=' "
                "(no blanks, '/', ':', quotes or control characters)")
    if len(s) > room:
        what = "a prefix (iptables adds '+')" if prefix else "an interface name"
        return f"must be no more than {room} characters for {what}"
    return ""


def shown(s: str, limit: int = 48) -> str:
    """S quoted for a one-line message: escapes for newlines and control characters, long text cut."""
    if len(s) <= limit:
        return repr(s)
    return f"{s[:limit]!r}... ({len(s)} characters)"
